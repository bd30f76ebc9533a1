package envflag

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// String returns $name, or def when unset or empty.
func String(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// Int returns $name as an integer, or def. A malformed value is an error
// rather than silently ignored, since it would change what is measured.
func Int(name string, def int) (int, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("environment %s=%q: %w", name, v, err)
	}
	return n, nil
}

// Duration returns $name as a time.Duration, or def.
func Duration(name string, def time.Duration) (time.Duration, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	d, err := time.ParseDuration(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("environment %s=%q: %w", name, v, err)
	}
	return d, nil
}

// Float returns $name as a float, or def.
func Float(name string, def float64) (float64, error) {
	v := os.Getenv(name)
	if v == "" {
		return def, nil
	}
	f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
	if err != nil {
		return 0, fmt.Errorf("environment %s=%q: %w", name, v, err)
	}
	return f, nil
}

// Ints parses a comma-separated list such as "1,16".
func Ints(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		n, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("list %q: %w", s, err)
		}
		out = append(out, n)
	}
	return out, nil
}

// List splits a comma-separated list, dropping empty items.
func List(s string) []string {
	var out []string
	for _, f := range strings.Split(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

// RepoRoot walks up from the working directory to the directory holding
// go.mod, so that the tools find bin/keyfence and bench/results wherever
// they are started from inside the repository. Outside it, the working
// directory is used.
func RepoRoot() string {
	wd, err := os.Getwd()
	if err != nil {
		return "."
	}
	for dir := wd; ; dir = filepath.Dir(dir) {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		if filepath.Dir(dir) == dir {
			return wd
		}
	}
}

// Defaults reads flag defaults from the environment and keeps every
// malformed value, so that a command reports them all at once (Err).
type Defaults struct{ errs []error }

// Int is Int, remembering the error.
func (d *Defaults) Int(name string, def int) int {
	v, err := Int(name, def)
	d.errs = append(d.errs, err)
	return v
}

// Duration is Duration, remembering the error.
func (d *Defaults) Duration(name string, def time.Duration) time.Duration {
	v, err := Duration(name, def)
	d.errs = append(d.errs, err)
	return v
}

// Float is Float, remembering the error.
func (d *Defaults) Float(name string, def float64) float64 {
	v, err := Float(name, def)
	d.errs = append(d.errs, err)
	return v
}

// Err joins the errors remembered so far (nil when there are none).
func (d *Defaults) Err() error { return errors.Join(d.errs...) }
