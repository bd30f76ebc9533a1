package upstream

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"strconv"
	"sync"
	"time"

	"github.com/keyfence/keyfence/resp"
)

// ClusterSlots is how many hash slots a Redis Cluster divides keys into.
const ClusterSlots = 16384

// ClusterMap is a Redis Cluster's slot → master table, refreshed from
// CLUSTER SLOTS.
type ClusterMap struct {
	cfg   *Config
	mu    sync.RWMutex
	slots [ClusterSlots]string
	nodes []string // masters, sorted, for fan-out
	last  time.Time
}

// NewClusterMap returns an empty map of the cluster cfg.Cluster seeds; it
// is filled on first use.
func NewClusterMap(cfg *Config) *ClusterMap { return &ClusterMap{cfg: cfg} }

// Master returns the master serving slot, refreshing the table once if it
// has none.
func (m *ClusterMap) Master(ctx context.Context, slot int) (string, error) {
	m.mu.RLock()
	addr := m.slots[slot]
	m.mu.RUnlock()
	if addr != "" {
		return addr, nil
	}
	if err := m.Refresh(ctx); err != nil {
		return "", err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	if addr = m.slots[slot]; addr == "" {
		return "", fmt.Errorf("cluster: no master serves slot %d", slot)
	}
	return addr, nil
}

// Masters returns every master, for commands over the whole keyspace.
func (m *ClusterMap) Masters(ctx context.Context) ([]string, error) {
	m.mu.RLock()
	n := append([]string(nil), m.nodes...)
	m.mu.RUnlock()
	if len(n) > 0 {
		return n, nil
	}
	if err := m.Refresh(ctx); err != nil {
		return nil, err
	}
	m.mu.RLock()
	defer m.mu.RUnlock()
	return append([]string(nil), m.nodes...), nil
}

// AnyMaster is where keyless commands go.
func (m *ClusterMap) AnyMaster(ctx context.Context) (string, error) {
	n, err := m.Masters(ctx)
	if err != nil {
		return "", err
	}
	if len(n) == 0 {
		return "", errors.New("cluster: no master known")
	}
	return n[rand.IntN(len(n))], nil
}

// RefreshNow starts a refresh in the background at once, past the rate
// limit: a MOVED reply says the table is out of date. ctx's values are
// kept, not its end: the refresh outlives the batch that asked for it.
func (m *ClusterMap) RefreshNow(ctx context.Context) {
	m.mu.Lock()
	m.last = time.Time{}
	m.mu.Unlock()
	go func() { _ = m.Refresh(context.WithoutCancel(ctx)) }()
}

// Refresh asks the known masters, then the seeds, for CLUSTER SLOTS. At most
// one refresh runs per 100 ms: a burst of MOVED replies costs one.
func (m *ClusterMap) Refresh(ctx context.Context) error {
	m.mu.Lock()
	if time.Since(m.last) < 100*time.Millisecond && len(m.nodes) > 0 {
		m.mu.Unlock()
		return nil
	}
	m.last = time.Now()
	candidates := append(append([]string(nil), m.nodes...), m.cfg.Cluster...)
	m.mu.Unlock()
	var errs []error
	for _, addr := range candidates {
		slots, err := m.fetchSlots(ctx, addr)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		m.mu.Lock()
		m.slots = slots
		seen := map[string]bool{}
		m.nodes = m.nodes[:0]
		for _, a := range slots {
			if a != "" && !seen[a] {
				seen[a] = true
				m.nodes = append(m.nodes, a)
			}
		}
		m.mu.Unlock()
		return nil
	}
	return fmt.Errorf("cluster: no node answered CLUSTER SLOTS: %w", errors.Join(errs...))
}

func (m *ClusterMap) fetchSlots(ctx context.Context, addr string) ([ClusterSlots]string, error) {
	var slots [ClusterSlots]string
	nc, err := Dial(ctx, m.cfg, Key{Node: addr})
	if err != nil {
		return slots, err
	}
	defer nc.Close()
	_ = nc.SetDeadline(time.Now().Add(m.cfg.DialTimeout + time.Second))
	if _, err := nc.Write(resp.AppendCommand(nil, []byte("CLUSTER"), []byte("SLOTS"))); err != nil {
		return slots, err
	}
	reply, err := resp.ReadReply(bufio.NewReader(nc))
	if err != nil {
		return slots, err
	}
	v, err := resp.Parse(reply)
	if err == nil {
		err = v.Err()
	}
	if err != nil {
		return slots, fmt.Errorf("CLUSTER SLOTS on %s: %w", addr, err)
	}
	for _, r := range v.Elems {
		if len(r.Elems) < 3 || len(r.Elems[2].Elems) < 2 {
			continue
		}
		host := string(r.Elems[2].Elems[0].Str)
		if host == "" {
			host, _, _ = net.SplitHostPort(addr) // Redis may omit its own address
		}
		master := net.JoinHostPort(host, strconv.FormatInt(r.Elems[2].Elems[1].Num, 10))
		for s := r.Elems[0].Num; s <= r.Elems[1].Num && s < ClusterSlots; s++ {
			slots[s] = master
		}
	}
	return slots, nil
}

// KeySlot is Redis Cluster's HASH_SLOT: CRC16 of the key, or of the first
// non-empty {…} in it.
func KeySlot(key []byte) int {
	if i := bytes.IndexByte(key, '{'); i >= 0 {
		if j := bytes.IndexByte(key[i+1:], '}'); j > 0 {
			key = key[i+1 : i+1+j]
		}
	}
	return int(crc16(key)) & (ClusterSlots - 1)
}

// crc16 is CRC-16/XMODEM, the variant Redis Cluster uses.
func crc16(b []byte) uint16 {
	var crc uint16
	for _, c := range b {
		crc ^= uint16(c) << 8
		for i := 0; i < 8; i++ {
			if crc&0x8000 != 0 {
				crc = crc<<1 ^ 0x1021
			} else {
				crc <<= 1
			}
		}
	}
	return crc
}
