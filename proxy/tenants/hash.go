package tenants

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
	"golang.org/x/crypto/bcrypt"
)

// The argon2id parameters of HashPassword: OWASP's first recommendation
// (m=19 MiB, t=2, p=1), with a 16-byte salt and a 32-byte key.
const (
	argonMemory  = 19 * 1024 // KiB
	argonTime    = 2
	argonThreads = 1
	argonSaltLen = 16
	argonKeyLen  = 32
)

// The largest parameters a hash may ask for. Every AUTH runs the hash with
// the parameters the file gives, so these are a denial-of-service guard,
// not a judgement of strength: one verification at m=1 GiB already takes
// as much memory as a gateway should ever spend on it.
const (
	maxArgonMemory  = 1 << 20 // KiB: 1 GiB
	maxArgonTime    = 10
	maxArgonThreads = 16
	maxBcryptCost   = 16 // about 4 s per verification on a 2020s core
	// bcrypt reads 72 bytes of a password and ignores the rest.
	bcryptMaxPassword = 72
)

// HashPassword returns the argon2id hash of password as a PHC string,
// $argon2id$v=19$m=19456,t=2,p=1$<salt>$<key> (base64 without padding), the
// form the tenants file takes in password_hash.
func HashPassword(password []byte) (string, error) {
	if len(password) == 0 {
		return "", errors.New("password: empty")
	}
	salt := make([]byte, argonSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("password salt: %w", err)
	}
	h := parsedHash{memory: argonMemory, time: argonTime, threads: argonThreads, salt: salt,
		key: argon2.IDKey(password, salt, argonTime, argonMemory, argonThreads, argonKeyLen)}
	return h.String(), nil
}

// VerifyPassword reports whether password is the one hash was made from.
// hash is an argon2id PHC string or a bcrypt hash ($2a$, $2b$, $2y$); any
// other string, and any hash the tenants file would refuse (malformed, or
// with parameters past the denial-of-service guard), gives false. Keys are
// compared in constant time. A password longer than bcrypt's 72 bytes never
// matches a bcrypt hash, where it would otherwise match every password that
// shares its first 72 bytes.
func VerifyPassword(hash string, password []byte) bool {
	switch h, err := parseHash(hash); {
	case err != nil:
		return false
	case h.bcryptCost > 0:
		return len(password) <= bcryptMaxPassword && bcrypt.CompareHashAndPassword([]byte(hash), password) == nil
	default:
		key := argon2.IDKey(password, h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
		return subtle.ConstantTimeCompare(key, h.key) == 1
	}
}

// errNotAHash is the refusal of a string that is neither kind of hash; the
// tenants file adds how to make one.
var errNotAHash = errors.New("not an argon2id or bcrypt hash")

// parsedHash is a checked password hash: a bcrypt hash (bcryptCost > 0),
// which bcrypt parses again itself, or an argon2id PHC string.
type parsedHash struct {
	bcryptCost   int
	memory, time uint32 // argon2id: KiB, passes
	threads      uint8
	salt, key    []byte
}

// String is the argon2id PHC string.
func (h parsedHash) String() string {
	b64 := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, h.memory, h.time, h.threads,
		b64.EncodeToString(h.salt), b64.EncodeToString(h.key))
}

// parseHash checks a password hash without running it. Its errors never
// quote the hash: a plaintext password put where the hash belongs must not
// reach a log.
func parseHash(s string) (parsedHash, error) {
	switch {
	case strings.HasPrefix(s, "$argon2id$"):
		return parseArgon2id(s)
	case strings.HasPrefix(s, "$2a$"), strings.HasPrefix(s, "$2b$"), strings.HasPrefix(s, "$2y$"):
		return parseBcrypt(s)
	}
	return parsedHash{}, errNotAHash
}

// parseArgon2id reads $argon2id$v=19$m=M,t=T,p=P$<salt>$<key>, the PHC
// string of the reference implementation, libsodium, argon2-cffi and
// HashPassword: the parameters in that order, base64 without padding.
func parseArgon2id(s string) (parsedHash, error) {
	parts := strings.Split(s, "$")
	if len(parts) != 6 {
		return parsedHash{}, errors.New("argon2id: want $argon2id$v=19$m=…,t=…,p=…$<salt>$<hash>")
	}
	if parts[2] != "v=19" {
		return parsedHash{}, errors.New("argon2id: version: want v=19 (argon2 1.3)")
	}
	var h parsedHash
	params := strings.Split(parts[3], ",")
	if len(params) != 3 {
		return parsedHash{}, errors.New("argon2id: parameters: want m=…,t=…,p=…")
	}
	var vals [3]uint64
	for i, name := range []string{"m", "t", "p"} {
		v, ok := strings.CutPrefix(params[i], name+"=")
		if !ok {
			return parsedHash{}, errors.New("argon2id: parameters: want m=…,t=…,p=…")
		}
		n, err := strconv.ParseUint(v, 10, 32)
		if err != nil {
			return parsedHash{}, fmt.Errorf("argon2id: %s: not a whole number", name)
		}
		vals[i] = n
	}
	m, t, p := vals[0], vals[1], vals[2]
	switch {
	case t < 1, p < 1:
		return parsedHash{}, errors.New("argon2id: t and p: must be at least 1")
	case m < 8*p:
		return parsedHash{}, errors.New("argon2id: m: must be at least 8 KiB per lane (8*p)")
	case m > maxArgonMemory:
		return parsedHash{}, fmt.Errorf("argon2id: m=%d: more than %d KiB (1 GiB), refused so that one AUTH cannot take the gateway's memory", m, maxArgonMemory)
	case t > maxArgonTime:
		return parsedHash{}, fmt.Errorf("argon2id: t=%d: more than %d passes, refused so that one AUTH cannot take the gateway's CPU", t, maxArgonTime)
	case p > maxArgonThreads:
		return parsedHash{}, fmt.Errorf("argon2id: p=%d: more than %d lanes, refused so that one AUTH cannot take the gateway's CPU", p, maxArgonThreads)
	}
	h.memory, h.time, h.threads = uint32(m), uint32(t), uint8(p)
	var err error
	if h.salt, err = decodeB64(parts[4]); err != nil || len(h.salt) < 8 || len(h.salt) > 64 {
		return parsedHash{}, errors.New("argon2id: salt: want 8 to 64 bytes in base64 without padding")
	}
	if h.key, err = decodeB64(parts[5]); err != nil || len(h.key) < 16 || len(h.key) > 64 {
		return parsedHash{}, errors.New("argon2id: hash: want 16 to 64 bytes in base64 without padding")
	}
	return h, nil
}

// decodeB64 decodes standard base64 without padding, refusing what the
// decoder would let through but a PHC string may not hold: line breaks
// (which Go's decoder skips) and non-zero trailing bits.
func decodeB64(s string) ([]byte, error) {
	b, err := base64.RawStdEncoding.Strict().DecodeString(s)
	if err != nil {
		return nil, err
	}
	if base64.RawStdEncoding.EncodeToString(b) != s {
		return nil, errors.New("not canonical base64")
	}
	return b, nil
}

func isDigit(c byte) bool { return c >= '0' && c <= '9' }

// bcryptAlphabet is bcrypt's own base64 alphabet.
const bcryptAlphabet = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"

// parseBcrypt checks $2a$NN$<53 characters>: bcrypt.Cost alone takes any
// minor version letter, a cost written "+5", and does not look at the salt
// and hash characters.
func parseBcrypt(s string) (parsedHash, error) {
	if len(s) != 60 || !isDigit(s[4]) || !isDigit(s[5]) || s[6] != '$' || strings.Trim(s[7:], bcryptAlphabet) != "" {
		return parsedHash{}, errors.New("bcrypt: want $2b$<cost>$ and 53 characters of bcrypt's base64")
	}
	cost, err := bcrypt.Cost([]byte(s))
	if err != nil {
		return parsedHash{}, fmt.Errorf("bcrypt: cost: want %d to %d", bcrypt.MinCost, maxBcryptCost)
	}
	if cost > maxBcryptCost {
		return parsedHash{}, fmt.Errorf("bcrypt: cost %d: more than %d, refused so that one AUTH cannot take the gateway's CPU", cost, maxBcryptCost)
	}
	return parsedHash{bcryptCost: cost}, nil
}
