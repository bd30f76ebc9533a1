package proxy

import (
	"bytes"
	"context"
	"math"
	"sort"
	"strconv"
	"strings"

	"github.com/keyfence/keyfence/resp"
	"github.com/keyfence/keyfence/rewrite"
	"github.com/keyfence/keyfence/upstream"
)

// SORT … BY/GET is run by keyfence itself: Redis refuses BY and GET to any
// ACL user limited to a key prefix (as a tenant's upstream user is), and
// patterns must never be sent upstream anyway. keyfence reads the elements,
// looks up the BY/GET keys in the tenant's namespace, sorts by Redis's
// rules (sort.c) and STOREs in a transaction.

type sortOptions struct {
	key      []byte
	by       []byte // nil: sort by the elements themselves
	dontSort bool   // BY without '*': keep the container's order
	gets     [][]byte
	desc     bool
	alpha    bool
	offset   int
	count    int // -1: all
	store    []byte
}

// needsSortEmulation reports whether SORT uses BY or GET.
func needsSortEmulation(cmd *rewrite.Command, args [][]byte) bool {
	if cmd.Name != "sort" && cmd.Name != "sort_ro" {
		return false
	}
	for _, a := range args[2:] {
		if strings.EqualFold(string(a), "by") || strings.EqualFold(string(a), "get") {
			return true
		}
	}
	return false
}

func parseSort(cmd *rewrite.Command, args [][]byte) (*sortOptions, string) {
	o := &sortOptions{key: args[1], count: -1}
	for j := 2; j < len(args); j++ {
		left := len(args) - j - 1
		switch a := strings.ToLower(string(args[j])); {
		case a == "asc":
			o.desc = false
		case a == "desc":
			o.desc = true
		case a == "alpha":
			o.alpha = true
		case a == "limit" && left >= 2:
			off, err1 := strconv.ParseInt(string(args[j+1]), 10, 64)
			cnt, err2 := strconv.ParseInt(string(args[j+2]), 10, 64)
			if err1 != nil || err2 != nil {
				return nil, "ERR value is not an integer or out of range"
			}
			o.offset, o.count = int(max(off, 0)), int(max(cnt, -1))
			if cnt < 0 {
				o.count = -1
			}
			j += 2
		case a == "store" && left >= 1 && cmd.Name == "sort":
			o.store = args[j+1]
			j++
		case a == "by" && left >= 1:
			o.by = args[j+1]
			o.dontSort = bytes.IndexByte(o.by, '*') < 0
			j++
		case a == "get" && left >= 1:
			o.gets = append(o.gets, args[j+1])
			j++
		default:
			return nil, "ERR syntax error"
		}
	}
	return o, ""
}

// sortElem is one element with what it sorts by.
type sortElem struct {
	val   []byte
	score float64
	cmp   []byte // ALPHA with BY: the BY value (nil: missing)
}

func (s *session) emulateSort(ctx context.Context, cmd *rewrite.Command, args [][]byte) {
	o, msg := parseSort(cmd, args)
	if msg != "" {
		s.addLocalError(msg)
		return
	}
	conn := s.conn()
	prefix := s.rw.KeyPrefix()
	key := append(append([]byte(nil), prefix...), o.key...)
	typ, err := s.call(ctx, conn, []byte("TYPE"), key)
	if err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	var elems [][]byte
	switch string(typ.Str) {
	case "none":
	case "list", "set", "zset":
		var v resp.Value
		switch string(typ.Str) {
		case "list":
			v, err = s.call(ctx, conn, []byte("LRANGE"), key, []byte("0"), []byte("-1"))
		case "set":
			v, err = s.call(ctx, conn, []byte("SMEMBERS"), key)
		default:
			v, err = s.call(ctx, conn, []byte("ZRANGE"), key, []byte("0"), []byte("-1"))
		}
		if err != nil {
			s.addLocalError(upstreamErrorText(err))
			return
		}
		for _, e := range v.Elems {
			elems = append(elems, e.Str)
		}
	default:
		s.addLocalError("WRONGTYPE Operation against a key holding the wrong kind of value")
		return
	}
	items := make([]sortElem, len(elems))
	for i, e := range elems {
		items[i].val = e
	}
	// A set has no order of its own: Redis sorts it when it must be
	// deterministic (STORE), and so does keyfence.
	if o.dontSort && string(typ.Str) == "set" && o.store != nil {
		o.dontSort, o.alpha, o.by = false, true, nil
	}
	if !o.dontSort {
		if o.by != nil {
			vals, err := s.lookupPattern(ctx, conn, o.by, elems)
			if err != nil {
				s.addLocalError(upstreamErrorText(err))
				return
			}
			for i := range items {
				items[i].cmp = vals[i]
			}
		}
		if !o.alpha {
			for i := range items {
				src := items[i].val
				if o.by != nil {
					src = items[i].cmp
					if src == nil {
						continue // a missing weight counts as 0
					}
				}
				f, err := strconv.ParseFloat(string(src), 64)
				if err != nil || math.IsNaN(f) {
					s.addLocalError("ERR One or more scores can't be converted into double")
					return
				}
				items[i].score = f
			}
		}
		sort.SliceStable(items, func(a, b int) bool {
			c := compareSort(&items[a], &items[b], o)
			if o.desc {
				c = -c
			}
			return c < 0
		})
	} else if o.desc && string(typ.Str) == "zset" {
		for i, j := 0, len(items)-1; i < j; i, j = i+1, j-1 {
			items[i], items[j] = items[j], items[i]
		}
	}
	// LIMIT, as sort.c clamps it.
	start, end := o.offset, len(items)-1
	if o.count >= 0 {
		end = start + o.count - 1
	}
	if start >= len(items) {
		start, end = len(items)-1, len(items)-2
	}
	if end >= len(items) {
		end = len(items) - 1
	}
	var picked [][]byte
	for i := start; i <= end && i >= 0; i++ {
		picked = append(picked, items[i].val)
	}
	// The reply: the elements, or for each the GET values.
	var out [][]byte
	var isNull []bool
	if len(o.gets) == 0 {
		out = picked
		isNull = make([]bool, len(out))
	} else {
		lookups := make([][][]byte, len(o.gets))
		for g, pat := range o.gets {
			if string(pat) == "#" {
				continue
			}
			if lookups[g], err = s.lookupPattern(ctx, conn, pat, picked); err != nil {
				s.addLocalError(upstreamErrorText(err))
				return
			}
		}
		for i, e := range picked {
			for g, pat := range o.gets {
				v := e
				if string(pat) != "#" {
					v = lookups[g][i]
				}
				out = append(out, v)
				isNull = append(isNull, v == nil)
			}
		}
	}
	if o.store != nil {
		s.sortStore(ctx, append(append([]byte(nil), prefix...), o.store...), out)
		return
	}
	reply := resp.AppendArrayHeader(nil, len(out))
	for i, v := range out {
		if isNull[i] {
			reply = resp.AppendNull(reply, s.resp3)
		} else {
			reply = resp.AppendBulk(reply, v)
		}
	}
	s.addLocal(reply)
}

// compareSort is sort.c's sortCompare without the DESC flip.
func compareSort(a, b *sortElem, o *sortOptions) int {
	if !o.alpha {
		switch {
		case a.score > b.score:
			return 1
		case a.score < b.score:
			return -1
		}
		return bytes.Compare(a.val, b.val)
	}
	if o.by != nil {
		switch {
		case a.cmp == nil && b.cmp == nil:
			return 0
		case a.cmp == nil:
			return -1
		case b.cmp == nil:
			return 1
		}
		return bytes.Compare(a.cmp, b.cmp)
	}
	return bytes.Compare(a.val, b.val)
}

// lookupPattern resolves a BY/GET pattern for each element, in the
// tenant's namespace: the first '*' is the element, and "->field" after it
// reads a hash field. Missing keys, missing fields and wrong types give nil,
// as in Redis.
func (s *session) lookupPattern(ctx context.Context, conn *upstream.Conn, pattern []byte, elems [][]byte) ([][]byte, error) {
	out := make([][]byte, len(elems))
	star := bytes.IndexByte(pattern, '*')
	if star < 0 || len(elems) == 0 {
		return out, nil // Redis looks nothing up for a pattern without '*'
	}
	keyPat, field := pattern, []byte(nil)
	if f := bytes.Index(pattern[star+1:], []byte("->")); f >= 0 && star+1+f+2 < len(pattern) {
		keyPat, field = pattern[:star+1+f], pattern[star+1+f+2:]
	}
	var req []byte
	for _, e := range elems {
		key := append(append(append(append([]byte(nil), s.rw.KeyPrefix()...), keyPat[:star]...), e...), keyPat[star+1:]...)
		if field != nil {
			req = resp.AppendCommand(req, []byte("HGET"), key, field)
		} else {
			req = resp.AppendCommand(req, []byte("GET"), key)
		}
	}
	b := upstream.NewBatch()
	if err := conn.RoundTrip(ctx, b, req, len(elems)); err != nil {
		return nil, err
	}
	for i := range elems {
		v, err := resp.Parse(b.Reply(i))
		if err == nil && (v.Type == '$' || v.Type == '+') && !v.Null {
			out[i] = v.Str
		}
	}
	return out, nil
}

// sortStore replaces dest with the result in one transaction and answers
// the number of elements stored; an empty result deletes dest.
func (s *session) sortStore(ctx context.Context, dest []byte, vals [][]byte) {
	c, err := s.group.Pin()
	if err != nil {
		s.addLocalError(err.Error())
		return
	}
	req := resp.AppendCommand(nil, []byte("MULTI"))
	req = resp.AppendCommand(req, []byte("DEL"), dest)
	n := 3
	if len(vals) > 0 {
		args := append([][]byte{[]byte("RPUSH"), dest}, vals...)
		for i := 2; i < len(args); i++ {
			if args[i] == nil {
				args[i] = []byte{}
			}
		}
		req = resp.AppendCommand(req, args...)
		n++
	}
	req = resp.AppendCommand(req, []byte("EXEC"))
	b := upstream.NewBatch()
	s.srv.pinnedCommands.Add(int64(n))
	err = c.RoundTrip(ctx, b, req, n)
	s.group.Unpin(c, err == nil)
	if err != nil {
		s.addLocalError(upstreamErrorText(err))
		return
	}
	if r := b.Reply(n - 1); len(r) == 0 || r[0] != '*' {
		s.addLocal(r)
		return
	}
	s.addLocal(resp.AppendInt(nil, int64(len(vals))))
}
