package rewrite

import (
	"errors"
	"sort"

	"github.com/keyfence/keyfence/resp"
)

// ErrUnknownKeys is returned for a command whose key positions cannot be
// determined from its arguments. Such a command is never forwarded.
var ErrUnknownKeys = errors.New("ERR keyfence cannot locate the keys of this command; it is not forwarded")

// ErrNotInteger is Redis's reply to a count that is not a number.
var ErrNotInteger = errorString("ERR value is not an integer or out of range")

// numkeysError is the error Redis gives when a command's key count reaches
// past its arguments: keyfence refuses such a command itself, in the same
// words, instead of forwarding what it cannot vouch for.
func numkeysError(cmd *Command) error {
	switch cmd.Name {
	case "sintercard", "eval", "evalsha", "eval_ro", "evalsha_ro", "fcall", "fcall_ro":
		return errorString("ERR Number of keys can't be greater than number of args")
	}
	return ErrSyntax
}

// Lookup returns the table entry for the command in args, descending into a
// container command's subcommand when args names one. It returns nil for an
// unknown command, and the container itself when the subcommand is unknown
// or missing (its arity then decides the error). Lookup does not allocate.
func Lookup(args [][]byte) *Command {
	if len(args) == 0 {
		return nil
	}
	cmd := lookupName(commandTable, args[0])
	if cmd == nil || cmd.Subcommands == nil || len(args) < 2 {
		return cmd
	}
	if sub := lookupName(cmd.Subcommands, args[1]); sub != nil {
		return sub
	}
	return cmd
}

// IsContainer reports whether cmd has subcommands (and so was reached
// without a known subcommand when Lookup returns it).
func (c *Command) IsContainer() bool { return c.Subcommands != nil }

// LookupName returns the table entry of a top-level command named in any
// case ("get", "GET"), or nil. It does not allocate.
func LookupName(name string) *Command {
	return lookupName(commandTable, name)
}

func lookupName[S string | []byte](m map[string]*Command, name S) *Command {
	var lower [32]byte
	if len(name) > len(lower) {
		return nil
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		lower[i] = c
	}
	return m[string(lower[:len(name)])]
}

// ArityOK reports whether args satisfies the command's Redis arity.
func (c *Command) ArityOK(nargs int) bool {
	if c.Arity >= 0 {
		return nargs == c.Arity
	}
	return nargs >= -c.Arity
}

// markKeys sets isKey[i] for every argument that is a key according to the
// command's key-specs, the way Redis's getKeysUsingKeySpecs finds them. It
// fails for specs that cannot be resolved, so that nothing whose keys are
// uncertain is forwarded.
func markKeys(cmd *Command, args [][]byte, isKey []bool) error {
	argc := len(args)
	for si := range cmd.KeySpecs {
		spec := &cmd.KeySpecs[si]
		if spec.BeginSearch.Unknown || spec.FindKeys.Unknown {
			return ErrUnknownKeys
		}
		first := 0
		if spec.BeginSearch.Keyword == "" {
			first = spec.BeginSearch.Index
		} else {
			first = findKeyword(args, spec.BeginSearch.Keyword, spec.BeginSearch.StartFrom)
			if first == 0 {
				continue // the optional keyword is absent: no keys here
			}
			if !spec.FindKeys.KeyNum && spec.FindKeys.LastKey == 0 && spec.BeginSearch.StartFrom > 0 {
				// A one-key option (GEORADIUS STORE/STOREDIST) may be given
				// more than once and Redis uses the last: every occurrence's
				// key is the tenant's.
				for i := first; i < argc; i++ {
					if equalFold(args[i-1], spec.BeginSearch.Keyword) {
						isKey[i] = true
					}
				}
				continue
			}
		}
		var last, step int
		fk := &spec.FindKeys
		if fk.KeyNum {
			step = fk.KeyStep
			if first+fk.KeyNumIdx >= argc {
				return ErrUnknownKeys
			}
			numkeys, ok := resp.ParseInt(args[first+fk.KeyNumIdx])
			if !ok {
				return ErrNotInteger
			}
			if numkeys < 0 || numkeys > int64(argc) {
				return numkeysError(cmd)
			}
			first += fk.FirstKey
			if numkeys == 0 {
				continue // Redis itself rejects it; nothing here is a key
			}
			last = first + int(numkeys) - 1
			if last >= argc {
				return numkeysError(cmd)
			}
		} else {
			step = fk.KeyStep
			switch {
			case fk.LastKey >= 0:
				last = first + fk.LastKey
			case fk.Limit == 0:
				last = argc + fk.LastKey
			default:
				last = first + ((argc-first)/fk.Limit + fk.LastKey)
			}
		}
		if step <= 0 {
			step = 1
		}
		if first >= argc || last >= argc || last < first {
			return ErrUnknownKeys
		}
		for i := first; i <= last; i += step {
			isKey[i] = true
		}
	}
	return nil
}

// findKeyword returns the index just past the keyword, or 0 when absent.
// Like Redis, a forward search never looks at the last argument and a
// backward one stops before the command name.
func findKeyword(args [][]byte, kw string, startFrom int) int {
	argc := len(args)
	start, end := startFrom, argc-1
	if startFrom <= 0 {
		start, end = argc+startFrom, 0
	}
	for i := start; i != end; {
		if i >= argc || i < 1 {
			return 0
		}
		if equalFold(args[i], kw) {
			return i + 1
		}
		if start <= end {
			i++
		} else {
			i--
		}
	}
	return 0
}

// equalFold compares ASCII case-insensitively without allocating.
func equalFold(b []byte, s string) bool {
	if len(b) != len(s) {
		return false
	}
	for i := 0; i < len(b); i++ {
		c, d := b[i], s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if d >= 'A' && d <= 'Z' {
			d += 'a' - 'A'
		}
		if c != d {
			return false
		}
	}
	return true
}

// AllowedCommands returns the names of the top-level commands a tenant may
// use (every policy but denied), sorted.
func AllowedCommands() []string {
	names := make([]string, 0, len(commandTable))
	for name, c := range commandTable {
		if c.Policy != PolicyDenied {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

// CommandNames returns every command and subcommand name in the table
// ("get", "client|list"), sorted: the label values of per-command metrics.
func CommandNames() []string {
	var names []string
	for name, c := range commandTable {
		names = append(names, name)
		for _, sc := range c.Subcommands {
			names = append(names, sc.Name)
		}
	}
	sort.Strings(names)
	return names
}
