// Package tenants is the gateway's tenants file: what it may say, how it is
// checked, how passwords are verified.
//
// In gateway mode one keyfence serves many tenants and a client picks its
// tenant with AUTH <tenant> <password>. The file lists the tenants, each
// with the argon2id (or bcrypt) hash of its password, the upstream ACL user
// its traffic runs as (defence in depth, optional) and its quotas. [Load]
// and [Parse] refuse anything doubtful with one line naming the tenant and
// the field: a plaintext password where a hash belongs, a misspelt field, a
// hash whose parameters would let one AUTH take the gateway's memory. A
// [File] that comes back is safe to serve from.
//
// [VerifyPassword] checks one password; [Checker] is what the gateway
// calls per AUTH: it bounds how many verifications run at once (argon2id
// takes about 19 MiB each, so a flood of AUTHs must wait rather than take
// the memory) and remembers the pairs that verified, so that an application
// opening many connections with the right password pays the hash once.
//
// The package is pure apart from reading the file and the upstream
// passwords it names (from the environment or a file); it holds no
// package-level mutable state.
package tenants
