package tenants

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"runtime"
	"sync"
)

// checkerMemory is how many verified (hash, password) pairs a Checker
// remembers: far more than the tenants of one gateway, each of which
// normally uses one password.
const checkerMemory = 4096

// A Checker verifies passwords for the gateway's AUTH. It runs at most
// concurrency verifications at once: argon2id takes about 19 MiB each, so a
// flood of AUTHs waits for a slot instead of taking the gateway's memory.
// It remembers the last 4096 pairs that verified, so that an application
// opening many connections with the right password pays the hash once, and
// checks that arrive while the same pair is being verified wait for that
// verification instead of running their own. Wrong passwords are never
// remembered: each guess pays the full hash.
//
// A remembered pair is kept as the SHA-256 of the hash and the password, in
// memory only. The hash is in the key, so when the tenants file changes a
// tenant's password hash the old password stops being remembered.
//
// A Checker is safe for concurrent use.
type Checker struct {
	slots  chan struct{}
	verify func(hash string, password []byte) bool // VerifyPassword; tests count calls through it

	mu       sync.Mutex
	known    map[pairKey]struct{}
	order    []pairKey // known in insertion order, a ring once full
	next     int       // the oldest entry of order once full
	inflight map[pairKey]*verification
}

type pairKey [sha256.Size]byte

// verification is one running VerifyPassword that other checks of the same
// pair wait for.
type verification struct {
	done      chan struct{}
	ok        bool
	abandoned bool // the verifier's ctx ended before a slot was free: nothing was verified
}

// NewChecker returns a Checker that runs at most concurrency verifications
// at once; concurrency <= 0 means runtime.GOMAXPROCS(0), one per core, since
// argon2id with p=1 keeps one core busy and more at once only queue.
func NewChecker(concurrency int) *Checker {
	if concurrency <= 0 {
		concurrency = runtime.GOMAXPROCS(0)
	}
	return &Checker{
		slots:    make(chan struct{}, concurrency),
		verify:   VerifyPassword,
		known:    make(map[pairKey]struct{}),
		inflight: make(map[pairKey]*verification),
	}
}

// Check reports whether password is the one hash was made from, as
// VerifyPassword does. It returns an error, ctx's, only when ctx ends
// before the verification could start (a client that went away while
// waiting for a slot); the answer is then false.
func (c *Checker) Check(ctx context.Context, hash string, password []byte) (bool, error) {
	key := keyOf(hash, password)
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		c.mu.Lock()
		if _, ok := c.known[key]; ok {
			c.mu.Unlock()
			return true, nil
		}
		if v := c.inflight[key]; v != nil {
			c.mu.Unlock()
			select {
			case <-v.done:
				if !v.abandoned {
					return v.ok, nil
				}
				continue // its verifier gave up waiting: try again, maybe as the verifier
			case <-ctx.Done():
				return false, ctx.Err()
			}
		}
		v := &verification{done: make(chan struct{})}
		c.inflight[key] = v
		c.mu.Unlock()
		return c.run(ctx, key, v, hash, password)
	}
}

// run verifies the pair as the one check that does so, and hands the
// answer to the checks waiting for it.
func (c *Checker) run(ctx context.Context, key pairKey, v *verification, hash string, password []byte) (bool, error) {
	select {
	case c.slots <- struct{}{}:
	case <-ctx.Done():
		c.mu.Lock()
		delete(c.inflight, key)
		v.abandoned = true
		c.mu.Unlock()
		close(v.done)
		return false, ctx.Err()
	}
	ok := c.verify(hash, password)
	<-c.slots
	c.mu.Lock()
	delete(c.inflight, key)
	if ok {
		c.remember(key)
	}
	v.ok = ok
	c.mu.Unlock()
	close(v.done)
	return ok, nil
}

// remember adds key, forgetting the oldest pair when full. c.mu is held.
func (c *Checker) remember(key pairKey) {
	if len(c.order) < checkerMemory {
		c.order = append(c.order, key)
	} else {
		delete(c.known, c.order[c.next])
		c.order[c.next] = key
		c.next = (c.next + 1) % checkerMemory
	}
	c.known[key] = struct{}{}
}

// keyOf is the SHA-256 of the pair; the hash's length goes first so that
// no two pairs share an encoding.
func keyOf(hash string, password []byte) pairKey {
	h := sha256.New()
	var n [8]byte
	binary.BigEndian.PutUint64(n[:], uint64(len(hash)))
	h.Write(n[:])
	h.Write([]byte(hash))
	h.Write(password)
	var k pairKey
	h.Sum(k[:0])
	return k
}
