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
	"github.com/keyfence/keyfence/proxy/tenants"
	"github.com/keyfence/keyfence/rewrite"
)

// runACL is `keyfence acl`: it prints, on one line of stdout, the ACL
// SETUSER command of the narrowest upstream user keyfence works with for a
// tenant, so that `keyfence acl --tenant acme | redis-cli …` applies it;
// with --tenants-file, one such line for each tenant that names an upstream
// user. Notes for the operator go to stderr, where they cannot be piped
// into redis-cli by mistake.
func runACL(args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("keyfence acl", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	str := func(p *string, name, env, def, usage string) {
		if v := getenv(env); v != "" {
			def = v
		}
		fs.StringVar(p, name, def, usage+" (env "+env+")")
	}
	var tenant, tenantsFile, keyFormat, user string
	str(&tenant, "tenant", "TENANT_ID", "", "tenant id, [A-Za-z0-9_-]{1,64} (this or --tenants-file is required)")
	str(&tenantsFile, "tenants-file", "PROXY_TENANTS_FILE", "", "gateway mode: the tenants file; one line for each tenant that names an upstream user")
	str(&keyFormat, "key-format", "PROXY_KEY_FORMAT", rewrite.DefaultKeyFormat, "namespace of the tenant's keys, as keyfence is run with")
	str(&user, "user", "REDIS_USERNAME", "", "ACL user name; empty: keyfence-<tenant> (not with --tenants-file)")
	var password string
	pw := &secretSetting{dst: &password, name: "redis-password", env: "REDIS_PASSWORD"}
	fs.StringVar(&pw.flagFile, "redis-password-file", "", "file holding the user's password (env REDIS_PASSWORD_FILE, or REDIS_PASSWORD itself); only its SHA-256 is printed (not with --tenants-file)")
	fs.Usage = func() {
		fmt.Fprintln(fs.Output(), `Usage: keyfence acl --tenant ID [--key-format F] [--user NAME]
       keyfence acl --tenants-file PATH [--key-format F]

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

With --tenants-file (gateway mode), it prints one such line for each tenant
whose upstream names a user, with the password its password_env or
password_file gives (again only its SHA-256). A tenant without upstream
runs as the gateway's own upstream user (REDIS_USERNAME) and gets no line;
keyfence acl says so on stderr.

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
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	if tenantsFile != "" {
		switch {
		case tenant != "":
			return errors.New("acl: --tenant (TENANT_ID) and --tenants-file (PROXY_TENANTS_FILE): set one")
		case given["user"]:
			return errors.New("acl: --user and --tenants-file: the tenants file names each tenant's upstream user (upstream.user)")
		case given["redis-password-file"]:
			return errors.New("acl: --redis-password-file and --tenants-file: the tenants file names each tenant's upstream password (upstream.password_env or password_file)")
		}
		return aclTenantsFile(tenantsFile, keyFormat, getenv, stdout, stderr)
	}
	if tenant == "" {
		return errors.New("acl: no tenant: set --tenant or TENANT_ID, or --tenants-file (PROXY_TENANTS_FILE)")
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
	if _, err := pw.resolve(given, getenv); err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	fmt.Fprintln(stdout, aclLine(user, prefix, password))
	if password == "" {
		fmt.Fprintf(stderr, "keyfence acl: no password given: user %s is created off, with none. Give it one with\n  ACL SETUSER %s on >PASSWORD\nor run keyfence acl again with REDIS_PASSWORD_FILE set.\n", user, user)
	}
	return nil
}

// aclTenantsFile prints the ACL SETUSER line of every tenant of the tenants
// file that names an upstream user, in file order.
func aclTenantsFile(path, keyFormat string, getenv func(string) string, stdout, stderr io.Writer) error {
	f, err := tenants.Load(path, envLookup(getenv))
	if err != nil {
		return fmt.Errorf("acl: %w", err)
	}
	var own []string
	for _, t := range f.Tenants {
		prefix, err := rewrite.Prefix(keyFormat, t.ID)
		if err != nil {
			return fmt.Errorf("acl: %w", err)
		}
		if t.UpstreamUser == "" {
			own = append(own, t.ID)
			continue
		}
		fmt.Fprintln(stdout, aclLine(t.UpstreamUser, prefix, t.UpstreamPassword))
	}
	if len(own) > 0 {
		fmt.Fprintf(stderr, "keyfence acl: no line for tenant %s: no upstream user in the tenants file, so it runs as the gateway's own upstream user (REDIS_USERNAME), not narrowed to its keys.\n", strings.Join(own, ", "))
	}
	return nil
}

// aclLine is the ACL SETUSER command of user for the keys under prefix. Only
// the password's SHA-256 is on it; with no password the user is off.
func aclLine(user, prefix, password string) string {
	hash := ""
	if password != "" {
		sum := sha256.Sum256([]byte(password))
		hash = hex.EncodeToString(sum[:])
	}
	return "ACL SETUSER " + user + " " + strings.Join(proxy.ACLRules(prefix, hash), " ")
}

// envLookup turns getenv into the lookup tenants.Load takes: a variable
// set to "" reads as unset, as everywhere in keyfence's settings.
func envLookup(getenv func(string) string) func(string) (string, bool) {
	return func(name string) (string, bool) {
		v := getenv(name)
		return v, v != ""
	}
}
