package main

import (
	"bufio"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/keyfence/keyfence/proxy/tenants"
)

// maxPasswordBytes is the longest password hash-password takes: far longer
// than any password, short enough that piping a file in by mistake stops.
const maxPasswordBytes = 4096

// runHashPassword is `keyfence hash-password`: it reads one password from
// stdin and prints its argon2id hash, the password_hash of a tenant in the
// tenants file. The password is read from stdin, never taken as an
// argument: arguments are in the process list and the shell's history.
// Nothing is written to stderr: main reports the error.
func runHashPassword(args []string, stdin io.Reader, stdout, _ io.Writer) error {
	fs := flag.NewFlagSet("keyfence hash-password", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {
		io.WriteString(fs.Output(), `Usage: keyfence hash-password < password

Reads one password from stdin (one line; a trailing newline, \n or \r\n, is
not part of it) and prints its argon2id hash, for the password_hash of a
tenant in the tenants file (--tenants-file):

  printf '%s\n' "$ACME_PASSWORD" | keyfence hash-password

The hash is argon2id with OWASP's parameters (m=19456 KiB, t=2, p=1) and a
random salt, so hashing one password twice gives two different hashes; both
verify. The password is never an argument: arguments show in the process
list and the shell's history.
`)
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return err
		}
		return fmt.Errorf("hash-password: %w (see keyfence hash-password --help)", err)
	}
	if fs.NArg() > 0 {
		return errors.New("hash-password: the password is read from stdin, never taken as an argument (see keyfence hash-password --help)")
	}
	// One line: read up to the newline, not to EOF, so that a password
	// typed at a terminal ends with Enter.
	line, err := bufio.NewReader(io.LimitReader(stdin, maxPasswordBytes+2)).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("hash-password: reading stdin: %w", err)
	}
	pw := strings.TrimSuffix(strings.TrimSuffix(line, "\n"), "\r")
	switch {
	case len(pw) > maxPasswordBytes:
		return fmt.Errorf("hash-password: longer than %d bytes: is stdin a password?", maxPasswordBytes)
	case pw == "":
		return errors.New("hash-password: empty password: give it on stdin, e.g. printf '%s\\n' \"$PASSWORD\" | keyfence hash-password")
	}
	hash, err := tenants.HashPassword([]byte(pw))
	if err != nil {
		return fmt.Errorf("hash-password: %w", err)
	}
	_, err = fmt.Fprintln(stdout, hash)
	return err
}
