package main

import (
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"

	"github.com/keyfence/keyfence/proxy"
	"github.com/keyfence/keyfence/rewrite"
)

// runACL is `keyfence acl`: it prints, on one line of stdout, the ACL
// SETUSER command of the narrowest upstream user keyfence works with for a
// tenant, so that `keyfence acl --tenant acme | redis-cli …` applies it.
// Notes for the operator go to stderr, where they cannot be piped into
// redis-cli by mistake.
func runACL(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keyfence acl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	str := func(p *string, name, env, def, usage string) {
		if v := getenv(env); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, usage+" (env "+env+")")
	}
	var tenant, keyFormat, user string
	str(&tenant, "tenant", "TENANT_ID", "", "tenant id, [A-Za-z0-9_-]{1,64} (required)")
	str(&keyFormat, "key-format", "PROXY_KEY_FORMAT", rewrite.DefaultKeyFormat, "namespace of the tenant's keys, as keyfence is run with")
	str(&user, "user", "REDIS_USERNAME", "", "ACL user name; empty: keyfence-<tenant>")
	var password string
	pw := &secretSetting{dst: &password, name: "redis-password", env: "REDIS_PASSWORD"}
	fs.StringVar(&pw.flagFile, "redis-password-file", "", "file holding the user's password (env REDIS_PASSWORD_FILE, or REDIS_PASSWORD itself); only its SHA-256 is printed")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `Usage: keyfence acl --tenant ID [--key-format F] [--user NAME]

Prints the ACL SETUSER command of the narrowest upstream Redis user that
keyfence works with for one tenant: the tenant's keys and channels only, and
only the commands keyfence forwards or sends itself for emulation. Apply it
as the Redis administrator, e.g.

  keyfence acl --tenant acme | redis-cli -h redis.internal --user admin --askpass

then run keyfence for that tenant with REDIS_USERNAME and REDIS_PASSWORD (or
REDIS_PASSWORD_FILE). With a password set (REDIS_PASSWORD, REDIS_PASSWORD_FILE
or --redis-password-file), the user is created "on" with the password's
SHA-256 (#…), so the password itself is never printed; without one it is
created "off", with no password, until you give it one.

Flags:`)
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fs.SetOutput(stdout)
			fs.Usage()
			return err
		}
		return fmt.Errorf("acl: %w (see keyfence acl --help)", err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("acl: unexpected argument %q (see keyfence acl --help)", fs.Arg(0))
	}
	if tenant == "" {
		return errors.New("acl: no tenant: set --tenant or TENANT_ID")
	}
	prefix, err := rewrite.Prefix(keyFormat, tenant)
	if err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	if user == "" {
		user = "keyfence-" + tenant
	}
	if err := proxy.ValidACLUserName(user); err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if _, err := pw.resolve(given, getenv); err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	hash := ""
	if password != "" {
		sum := sha256.Sum256([]byte(password))
		hash = hex.EncodeToString(sum[:])
	}
	fmt.Fprintln(stdout, "ACL SETUSER "+user+" "+strings.Join(proxy.ACLRules(prefix, hash), " "))
	if hash == "" {
		fmt.Fprintf(stderr, "keyfence acl: no password given: user %s is created off, with none. Give it one with\n  ACL SETUSER %s on >PASSWORD\nor run keyfence acl again with REDIS_PASSWORD_FILE set.\n", user, user)
	}
	return nil
}
