package main

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/keyfence/keyfence/bench/internal/resp"
)

// endpoint is one address to load, and the pid of the process behind it
// when known (needed only for memory readings).
type endpoint struct {
	Addr string `json:"addr"`
	Pid  int    `json:"pid,omitempty"`
	// Label names the endpoint in reports (the tenant's process for a
	// started keyfence); empty means the address.
	Label string `json:"label,omitempty"`
	// User and Password, when User is set, are sent with AUTH on every
	// connection: a keyfence gateway's tenant and its password.
	User     string `json:"user,omitempty"`
	Password string `json:"-"`
}

// dial connects to the endpoint, small buffers or not (resp.DialSmall),
// and authenticates as its user if it has one.
func (e endpoint) dial(ctx context.Context, small bool) (*resp.Conn, error) {
	d := resp.Dial
	if small {
		d = resp.DialSmall
	}
	c, err := d(ctx, e.Addr)
	if err != nil {
		return nil, err
	}
	if e.User != "" {
		actx, cancel := context.WithTimeout(ctx, 30*time.Second)
		err := c.Auth(actx, e.User, e.Password)
		cancel()
		if err != nil {
			c.Close()
			return nil, err
		}
	}
	return c, nil
}

func (e endpoint) name() string {
	if e.Label != "" {
		return e.Label
	}
	return e.Addr
}

// group is one line of the report: a set of endpoints loaded at the same
// time (several keyfence listeners = several tenants at once). Groups are
// measured one after another, never concurrently, so they do not compete
// for CPU.
type group struct {
	Name      string     `json:"name"`
	Endpoints []endpoint `json:"endpoints"`
}

// parseGroup parses "[name=]addr[@pid][,addr[@pid]...]".
func parseGroup(s string) (group, error) {
	var g group
	spec := s
	if name, rest, ok := strings.Cut(s, "="); ok {
		g.Name, spec = strings.TrimSpace(name), rest
	}
	for _, part := range strings.Split(spec, ",") {
		part = strings.TrimSpace(part)
		if part == "" {
			continue
		}
		var ep endpoint
		addr, pid, hasPid := strings.Cut(part, "@")
		ep.Addr = addr
		if hasPid {
			n, err := strconv.Atoi(pid)
			if err != nil || n <= 0 {
				return g, fmt.Errorf("target %q: bad pid %q", s, pid)
			}
			ep.Pid = n
		}
		if !strings.Contains(ep.Addr, ":") {
			return g, fmt.Errorf("target %q: address %q has no port", s, ep.Addr)
		}
		g.Endpoints = append(g.Endpoints, ep)
	}
	if len(g.Endpoints) == 0 {
		return g, fmt.Errorf("target %q: no address", s)
	}
	if g.Name == "" {
		g.Name = g.Endpoints[0].Addr
		if len(g.Endpoints) > 1 {
			g.Name += fmt.Sprintf("+%d", len(g.Endpoints)-1)
		}
	}
	return g, nil
}

// groupsFlag collects repeated -targets flags.
type groupsFlag []group

func (f *groupsFlag) String() string {
	names := make([]string, len(*f))
	for i, g := range *f {
		names[i] = g.Name
	}
	return strings.Join(names, " ")
}

func (f *groupsFlag) Set(s string) error {
	g, err := parseGroup(s)
	if err != nil {
		return err
	}
	*f = append(*f, g)
	return nil
}
