package rewrite

import (
	"bytes"
	"strconv"
	"strings"
	"testing"

	"github.com/keyfence/keyfence/resp"
)

// RESP builders for replies.
func bulk(s string) string { return "$" + strconv.Itoa(len(s)) + "\r\n" + s + "\r\n" }
func arr(el ...string) string {
	return "*" + strconv.Itoa(len(el)) + "\r\n" + strings.Join(el, "")
}
func mapr(kv ...string) string {
	return "%" + strconv.Itoa(len(kv)/2) + "\r\n" + strings.Join(kv, "")
}
func push(el ...string) string {
	return ">" + strconv.Itoa(len(el)) + "\r\n" + strings.Join(el, "")
}
func integer(n int) string   { return ":" + strconv.Itoa(n) + "\r\n" }
func double(s string) string { return "," + s + "\r\n" }

const (
	nullBulk  = "$-1\r\n"
	nullArray = "*-1\r\n"
	null3     = "_\r\n"
)

var allKinds = []ReplyKind{ReplyRaw, ReplyKey, ReplyKeyList, ReplyScan, ReplyKeyFirst, ReplyStreams,
	ReplyChannelMsg, ReplyChannelList, ReplyChannelCounts}

func kindName(k ReplyKind) string {
	names := [...]string{"Raw", "Key", "KeyList", "Scan", "KeyFirst", "Streams", "ChannelMsg", "ChannelList", "ChannelCounts"}
	if int(k) < len(names) {
		return names[k]
	}
	return "Kind" + strconv.Itoa(int(k))
}

// TestAllKindsListed keeps allKinds (used by the error and fuzz tests) in
// step with the table: every kind a command uses is in it.
func TestAllKindsListed(t *testing.T) {
	listed := map[ReplyKind]bool{}
	for _, k := range allKinds {
		listed[k] = true
	}
	for _, c := range allTableEntries() {
		if !listed[c.Reply] {
			t.Errorf("%s uses reply kind %d, missing from allKinds", c.Name, c.Reply)
		}
	}
}

type stripCase struct {
	name string
	kind ReplyKind
	in   string
	want string // "" means unchanged
}

func runStrips(t *testing.T, cases []stripCase) {
	t.Helper()
	r := NewRewriter(P)
	for _, tt := range cases {
		t.Run(kindName(tt.kind)+"/"+tt.name, func(t *testing.T) {
			want := tt.want
			if want == "" {
				want = tt.in
			}
			if n, err := resp.ReplyLen([]byte(tt.in)); n != len(tt.in) || err != nil {
				t.Fatalf("test input %q is not one complete reply: %d, %v", tt.in, n, err)
			}
			in := []byte(tt.in)
			dst := []byte("prev")
			got := r.AppendReply(dst, in, tt.kind)
			if !bytes.HasPrefix(got, []byte("prev")) {
				t.Fatalf("dst's previous content lost: %q", got)
			}
			if string(got[4:]) != want {
				t.Fatalf("\n in   %q\n got  %q\n want %q", tt.in, got[4:], want)
			}
			if string(in) != tt.in {
				t.Errorf("the upstream reply was modified: %q", in)
			}
			if n, err := resp.ReplyLen(got[4:]); n != len(got)-4 || err != nil {
				t.Errorf("output %q is not one complete reply: %d, %v", got[4:], n, err)
			}
		})
	}
}

func TestStripKey(t *testing.T) {
	runStrips(t, []stripCase{
		{"randomkey", ReplyKey, bulk(P + "k"), bulk("k")},
		{"randomkey empty name", ReplyKey, bulk(P), bulk("")},
		{"randomkey with hashtag", ReplyKey, bulk(P + "{u}:k"), bulk("{u}:k")},
		{"randomkey null resp2", ReplyKey, nullBulk, ""},
		{"randomkey null resp3", ReplyKey, null3, ""},
		{"simple string key", ReplyKey, "+" + P + "k\r\n", "+k\r\n"},
		{"not ours: unchanged", ReplyKey, bulk("tenant:t2:k"), ""},
		{"prefix without separator: unchanged", ReplyKey, bulk("tenant:t1"), ""},
		{"prefix in the middle: unchanged", ReplyKey, bulk("x" + P + "k"), ""},
		{"binary key", ReplyKey, bulk(P + "a\r\nb\x00"), bulk("a\r\nb\x00")},
	})
}

func TestStripKeyList(t *testing.T) {
	runStrips(t, []stripCase{
		{"keys", ReplyKeyList, arr(bulk(P+"a"), bulk(P+"b:c")), arr(bulk("a"), bulk("b:c"))},
		{"keys empty", ReplyKeyList, arr(), ""},
		{"keys prefix only once", ReplyKeyList, arr(bulk(P + P + "x")), arr(bulk(P + "x"))},
		{"keys mixed", ReplyKeyList, arr(bulk(P+"a"), bulk("b")), arr(bulk("a"), bulk("b"))},
		{"keys resp3 set", ReplyKeyList, "~1\r\n" + bulk(P+"a"), "~1\r\n" + bulk("a")},
		{"null array", ReplyKeyList, nullArray, ""},
	})
}

func TestStripScan(t *testing.T) {
	runStrips(t, []stripCase{
		{"scan", ReplyScan, arr(bulk("17"), arr(bulk(P+"a"), bulk(P+"b"))), arr(bulk("17"), arr(bulk("a"), bulk("b")))},
		{"scan last page", ReplyScan, arr(bulk("0"), arr()), ""},
		{"scan cursor is not a key", ReplyScan, arr(bulk(P+"1"), arr(bulk(P+"k"))), arr(bulk(P+"1"), arr(bulk("k")))},
		{"scan wrong shape", ReplyScan, arr(bulk(P + "k")), ""},
		{"scan integer", ReplyScan, integer(3), ""},
	})
}

func TestStripKeyFirst(t *testing.T) {
	runStrips(t, []stripCase{
		// BLPOP/BRPOP: [key, value]; the value is never touched.
		{"blpop", ReplyKeyFirst, arr(bulk(P+"l"), bulk("v")), arr(bulk("l"), bulk("v"))},
		{"blpop value looks like a key", ReplyKeyFirst, arr(bulk(P+"l"), bulk(P+"v")), arr(bulk("l"), bulk(P+"v"))},
		{"blpop timeout resp2", ReplyKeyFirst, nullArray, ""},
		{"blpop timeout resp3", ReplyKeyFirst, null3, ""},
		{"blpop resp3 push-free array", ReplyKeyFirst, arr(bulk(P+"q"), bulk("job")), arr(bulk("q"), bulk("job"))},
		// BZPOPMIN/BZPOPMAX: [key, member, score].
		{"bzpopmin resp2", ReplyKeyFirst, arr(bulk(P+"z"), bulk(P+"m"), bulk("1.5")), arr(bulk("z"), bulk(P+"m"), bulk("1.5"))},
		{"bzpopmin resp3", ReplyKeyFirst, arr(bulk(P+"z"), bulk("m"), double("1.5")), arr(bulk("z"), bulk("m"), double("1.5"))},
		// LMPOP/BLMPOP: [key, [elements]]; ZMPOP/BZMPOP: [key, [[member, score]]].
		{"lmpop", ReplyKeyFirst, arr(bulk(P+"l"), arr(bulk(P+"a"), bulk("b"))), arr(bulk("l"), arr(bulk(P+"a"), bulk("b")))},
		{"lmpop none", ReplyKeyFirst, nullArray, ""},
		{"zmpop resp2", ReplyKeyFirst, arr(bulk(P+"z"), arr(arr(bulk(P+"m"), bulk("1")))), arr(bulk("z"), arr(arr(bulk(P+"m"), bulk("1"))))},
		{"zmpop resp3", ReplyKeyFirst, arr(bulk(P+"z"), arr(arr(bulk("m"), double("1")), arr(bulk("n"), double("2")))), arr(bulk("z"), arr(arr(bulk("m"), double("1")), arr(bulk("n"), double("2"))))},
		{"bzmpop timeout resp3", ReplyKeyFirst, null3, ""},
		{"not an array", ReplyKeyFirst, bulk(P + "k"), ""},
	})
}

func TestStripStreams(t *testing.T) {
	entries := arr(arr(bulk("1-1"), arr(bulk("f"), bulk(P+"v"))), arr(bulk("2-1"), arr(bulk(P+"f"), bulk("w"))))
	runStrips(t, []stripCase{
		{"xread resp2", ReplyStreams, arr(arr(bulk(P+"s"), entries)), arr(arr(bulk("s"), entries))},
		{"xread resp2 two streams", ReplyStreams, arr(arr(bulk(P+"a"), entries), arr(bulk(P+"b"), arr())), arr(arr(bulk("a"), entries), arr(bulk("b"), arr()))},
		{"xread resp3 map", ReplyStreams, mapr(bulk(P+"s"), entries), mapr(bulk("s"), entries)},
		{"xread resp3 map two streams", ReplyStreams, mapr(bulk(P+"a"), entries, bulk(P+"b"), arr()), mapr(bulk("a"), entries, bulk("b"), arr())},
		{"xreadgroup deleted entry", ReplyStreams, arr(arr(bulk(P+"s"), arr(arr(bulk("1-1"), nullArray)))), arr(arr(bulk("s"), arr(arr(bulk("1-1"), nullArray))))},
		{"xread timeout resp2", ReplyStreams, nullArray, ""},
		{"xread timeout resp3", ReplyStreams, null3, ""},
		{"xread resp3 null map", ReplyStreams, "%-1\r\n", ""},
	})
}

func TestStripChannelMessages(t *testing.T) {
	runStrips(t, []stripCase{
		{"message", ReplyChannelMsg, arr(bulk("message"), bulk(P+"ch"), bulk("hello")), arr(bulk("message"), bulk("ch"), bulk("hello"))},
		{"message payload is a value", ReplyChannelMsg, arr(bulk("message"), bulk(P+"ch"), bulk(P+"k")), arr(bulk("message"), bulk("ch"), bulk(P+"k"))},
		{"message resp3 push", ReplyChannelMsg, push(bulk("message"), bulk(P+"ch"), bulk("x")), push(bulk("message"), bulk("ch"), bulk("x"))},
		{"pmessage", ReplyChannelMsg, arr(bulk("pmessage"), bulk(P+"news.*"), bulk(P+"news.1"), bulk(P+"x")), arr(bulk("pmessage"), bulk("news.*"), bulk("news.1"), bulk(P+"x"))},
		{"pmessage resp3", ReplyChannelMsg, push(bulk("pmessage"), bulk(P+"n*"), bulk(P+"n1"), bulk("x")), push(bulk("pmessage"), bulk("n*"), bulk("n1"), bulk("x"))},
		{"smessage", ReplyChannelMsg, push(bulk("smessage"), bulk(P+"ch"), bulk("x")), push(bulk("smessage"), bulk("ch"), bulk("x"))},
		{"subscribe", ReplyChannelMsg, arr(bulk("subscribe"), bulk(P+"ch"), integer(1)), arr(bulk("subscribe"), bulk("ch"), integer(1))},
		{"subscribe resp3", ReplyChannelMsg, push(bulk("subscribe"), bulk(P+"ch"), integer(2)), push(bulk("subscribe"), bulk("ch"), integer(2))},
		{"psubscribe", ReplyChannelMsg, arr(bulk("psubscribe"), bulk(P+"n.*"), integer(3)), arr(bulk("psubscribe"), bulk("n.*"), integer(3))},
		{"ssubscribe", ReplyChannelMsg, arr(bulk("ssubscribe"), bulk(P+"s"), integer(1)), arr(bulk("ssubscribe"), bulk("s"), integer(1))},
		{"unsubscribe", ReplyChannelMsg, arr(bulk("unsubscribe"), bulk(P+"ch"), integer(0)), arr(bulk("unsubscribe"), bulk("ch"), integer(0))},
		{"unsubscribe from nothing", ReplyChannelMsg, arr(bulk("unsubscribe"), nullBulk, integer(0)), ""},
		{"punsubscribe", ReplyChannelMsg, arr(bulk("punsubscribe"), bulk(P+"*"), integer(0)), arr(bulk("punsubscribe"), bulk("*"), integer(0))},
		{"keyspace message", ReplyChannelMsg, arr(bulk("message"), bulk("__keyspace@0__:"+P+"k"), bulk("set")), arr(bulk("message"), bulk("__keyspace@0__:k"), bulk("set"))},
		{"keyspace subscribe", ReplyChannelMsg, arr(bulk("subscribe"), bulk("__keyspace@3__:"+P+"{u}:k"), integer(1)), arr(bulk("subscribe"), bulk("__keyspace@3__:{u}:k"), integer(1))},
		{"keyspace pmessage", ReplyChannelMsg, arr(bulk("pmessage"), bulk("__keyspace@*__:"+P+"*"), bulk("__keyspace@0__:"+P+"k"), bulk("del")), arr(bulk("pmessage"), bulk("__keyspace@*__:*"), bulk("__keyspace@0__:k"), bulk("del"))},
		{"keyevent subscribe unchanged", ReplyChannelMsg, arr(bulk("subscribe"), bulk("__keyevent@0__:set"), integer(1)), ""},
		{"keyevent psubscribe unchanged", ReplyChannelMsg, arr(bulk("psubscribe"), bulk("__keyevent@*__:*"), integer(1)), ""},
		{"pong in subscriber mode", ReplyChannelMsg, arr(bulk("pong"), bulk("")), ""},
		{"not a message", ReplyChannelMsg, "+OK\r\n", ""},
	})
}

// TestStripKeyeventPayload: a keyevent notification's payload is a key
// name, of any tenant; the spec makes keyevent payloads tenant-scoped. The
// tenant's own keys come back unprefixed and other tenants' keys must not
// reach it at all, whether the message goes through AppendReply or
// AppendPush.
func TestStripKeyeventPayload(t *testing.T) {
	r := NewRewriter(P)
	own := []struct{ in, want string }{
		{arr(bulk("message"), bulk("__keyevent@0__:set"), bulk(P+"k")), arr(bulk("message"), bulk("__keyevent@0__:set"), bulk("k"))},
		{push(bulk("pmessage"), bulk("__keyevent@*__:*"), bulk("__keyevent@0__:del"), bulk(P+"k")), push(bulk("pmessage"), bulk("__keyevent@*__:*"), bulk("__keyevent@0__:del"), bulk("k"))},
	}
	for _, tt := range own {
		if got := r.AppendReply(nil, []byte(tt.in), ReplyChannelMsg); string(got) != tt.want {
			t.Errorf("AppendReply(%q) = %q, want %q", tt.in, got, tt.want)
		}
		got, info := r.AppendPush(nil, []byte(tt.in), tt.in[0] == '>')
		if string(got) != tt.want || info.Drop || info.Kind != PushMessage {
			t.Errorf("AppendPush(%q) = %q, %+v; want %q", tt.in, got, info, tt.want)
		}
	}
	for _, msg := range []string{
		arr(bulk("message"), bulk("__keyevent@0__:set"), bulk("tenant:t2:secret")),
		push(bulk("pmessage"), bulk("__keyevent@*__:*"), bulk("__keyevent@0__:expired"), bulk("tenant:t2:session:42")),
		arr(bulk("message"), bulk("__keyevent@0__:set"), bulk("unprefixed")),
		arr(bulk("message"), bulk("__keyevent@0__:set"), nullBulk),
	} {
		if got := r.AppendReply([]byte("prev"), []byte(msg), ReplyChannelMsg); string(got) != "prev" {
			t.Errorf("AppendReply: another tenant's keyevent reaches t1: %q", got[4:])
		}
		got, info := r.AppendPush([]byte("prev"), []byte(msg), msg[0] == '>')
		if string(got) != "prev" || !info.Drop {
			t.Errorf("AppendPush: another tenant's keyevent reaches t1: %q, %+v", got[4:], info)
		}
	}
}

func TestAppendPush(t *testing.T) {
	r := NewRewriter(P)
	tests := []struct {
		name  string
		in    string
		resp3 bool
		want  string // "" unchanged; "-" nothing appended
		kind  PushKind
		count int64
	}{
		{"message resp2", arr(bulk("message"), bulk(P+"ch"), bulk(P+"v")), false, arr(bulk("message"), bulk("ch"), bulk(P+"v")), PushMessage, 0},
		{"message resp3", push(bulk("message"), bulk(P+"ch"), bulk("v")), true, push(bulk("message"), bulk("ch"), bulk("v")), PushMessage, 0},
		{"pmessage", push(bulk("pmessage"), bulk(P+"n*"), bulk(P+"n1"), bulk(P+"v")), true, push(bulk("pmessage"), bulk("n*"), bulk("n1"), bulk(P+"v")), PushMessage, 0},
		{"smessage", push(bulk("smessage"), bulk(P+"s"), bulk("v")), true, push(bulk("smessage"), bulk("s"), bulk("v")), PushMessage, 0},
		{"keyspace message", arr(bulk("message"), bulk("__keyspace@0__:"+P+"k"), bulk("set")), false, arr(bulk("message"), bulk("__keyspace@0__:k"), bulk("set")), PushMessage, 0},
		{"subscribe", arr(bulk("subscribe"), bulk(P+"ch"), integer(1)), false, arr(bulk("subscribe"), bulk("ch"), integer(1)), PushSubscribe, 1},
		{"psubscribe", push(bulk("psubscribe"), bulk("__keyspace@*__:"+P+"*"), integer(2)), true, push(bulk("psubscribe"), bulk("__keyspace@*__:*"), integer(2)), PushSubscribe, 2},
		{"ssubscribe", push(bulk("ssubscribe"), bulk(P+"s"), integer(3)), true, push(bulk("ssubscribe"), bulk("s"), integer(3)), PushSubscribe, 3},
		{"unsubscribe", arr(bulk("unsubscribe"), bulk(P+"ch"), integer(0)), false, arr(bulk("unsubscribe"), bulk("ch"), integer(0)), PushUnsubscribe, 0},
		{"unsubscribe none", arr(bulk("unsubscribe"), nullBulk, integer(0)), false, "", PushUnsubscribe, 0},
		{"punsubscribe resp3", push(bulk("punsubscribe"), bulk(P+"*"), integer(4)), true, push(bulk("punsubscribe"), bulk("*"), integer(4)), PushUnsubscribe, 4},
		{"pong", arr(bulk("pong"), bulk(P+"x")), false, "", PushPong, 0},
		{"invalidate", push(bulk("invalidate"), arr(bulk(P+"a"), bulk(P+"b"))), true, push(bulk("invalidate"), arr(bulk("a"), bulk("b"))), PushInvalidation, 0},
		{"invalidate flush", push(bulk("invalidate"), null3), true, "", PushInvalidation, 0},
		{"resp3 array is a reply", arr(bulk("message"), bulk(P+"ch"), bulk("v")), true, "-", PushNone, 0},
		{"resp2 push is not", push(bulk("message"), bulk(P+"ch"), bulk("v")), false, "-", PushNone, 0},
		{"normal reply", bulk(P + "v"), false, "-", PushNone, 0},
		{"unknown push", push(bulk("other"), bulk(P+"x")), true, "-", PushNone, 0},
		{"too short", arr(bulk("message")), false, "-", PushNone, 0},
		{"incomplete", "*3\r\n" + bulk("message") + bulk(P+"ch"), false, "-", PushNone, 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := "prev" + tt.want
			switch tt.want {
			case "":
				want = "prev" + tt.in
			case "-":
				want = "prev"
			}
			got, info := r.AppendPush([]byte("prev"), []byte(tt.in), tt.resp3)
			if string(got) != want || info.Kind != tt.kind || info.Count != tt.count || info.Drop {
				t.Fatalf("\n in   %q\n got  %q %+v\n want %q kind %d count %d", tt.in, got, info, want, tt.kind, tt.count)
			}
		})
	}
}

// TestAppendPushMalformedNoPanic: a broken or hostile upstream must not
// crash the proxy. A pmessage of two elements makes AppendPush read
// elems[2] (pubsub.go, the keyevent check uses elems[chanIdx]).
func TestAppendPushMalformedNoPanic(t *testing.T) {
	r := NewRewriter(P)
	for _, in := range []string{
		arr(bulk("pmessage"), bulk(P+"x")),
		push(bulk("pmessage"), bulk("__keyevent@0__:set")),
		arr(bulk("subscribe"), bulk(P+"x")),
		arr(bulk("message"), integer(1), bulk("v")),
		arr(bulk("pmessage"), bulk("p"), integer(1), bulk("v")),
		arr(integer(1), bulk("x")),
		arr(bulk("invalidate"), bulk("x"), bulk("y")),
		arr(bulk("subscribe"), bulk(P+"ch"), bulk("notanumber")),
		arr(bulk("message"), "$-1\r\n", bulk("v")),
	} {
		for _, resp3 := range []bool{false, true} {
			msg := in
			if resp3 {
				msg = ">" + in[1:]
			}
			func() {
				defer func() {
					if p := recover(); p != nil {
						t.Errorf("AppendPush(%q) panics: %v", msg, p)
					}
				}()
				r.AppendPush(nil, []byte(msg), resp3)
				r.AppendReply(nil, []byte(msg), ReplyChannelMsg)
			}()
		}
	}
}

// TestAppendPushDropsForeignKeyspace: a keyspace notification whose key is
// not the tenant's can only come from a pattern that escaped the prefix
// (see TestPsubscribeKeyspaceGlobCannotEscape) or from another tenant
// naming its keys "…__:tenant:t1:…" to match `__keyspace@*__:tenant:t1:*`.
// Either way it names another tenant's key: defence in depth drops it, as
// foreign keyevent payloads are dropped.
func TestAppendPushDropsForeignKeyspace(t *testing.T) {
	r := NewRewriter(P)
	for _, msg := range []string{
		push(bulk("pmessage"), bulk("__keyspace@[^__:"+P+"]*"), bulk("__keyspace@0__:tenant:t2:secret"), bulk("set")),
		push(bulk("pmessage"), bulk("__keyspace@*__:"+P+"*"), bulk("__keyspace@0__:tenant:t2:x__:"+P+"y"), bulk("del")),
		arr(bulk("message"), bulk("__keyspace@0__:tenant:t2:secret"), bulk("set")),
	} {
		got, info := r.AppendPush(nil, []byte(msg), msg[0] == '>')
		if bytes.Contains(got, []byte("tenant:t2:")) {
			t.Errorf("AppendPush(%q) = %q, %+v: another tenant's key reaches t1", msg, got, info)
		}
	}
}

// TestStripPubsubChannelReplies: PUBSUB CHANNELS/SHARDCHANNELS answer
// channel names and NUMSUB/SHARDNUMSUB [channel, count …]; the spec says
// their results are stripped, but their table entries are ReplyRaw, so the
// client sees "tenant:t1:news" for the channel it calls "news".
func TestStripPubsubChannelReplies(t *testing.T) {
	r := NewRewriter(P)
	for _, tt := range []struct {
		req       []string
		reply     string
		wantReply string
	}{
		{a("PUBSUB", "CHANNELS"), arr(bulk(P+"news"), bulk(P+"chat")), arr(bulk("news"), bulk("chat"))},
		{a("PUBSUB", "SHARDCHANNELS", "s*"), arr(bulk(P + "s1")), arr(bulk("s1"))},
		{a("PUBSUB", "NUMSUB", "news"), arr(bulk(P+"news"), integer(2)), arr(bulk("news"), integer(2))},
		{a("PUBSUB", "SHARDNUMSUB", "s1"), arr(bulk(P+"s1"), integer(0)), arr(bulk("s1"), integer(0))},
	} {
		cmd := Lookup(toArgs(tt.req))
		got := r.AppendReply(nil, []byte(tt.reply), cmd.Reply)
		if string(got) != tt.wantReply {
			t.Errorf("%q (reply kind %s): client gets %q, want %q", tt.req, kindName(cmd.Reply), got, tt.wantReply)
		}
	}
}

func TestStripChannelLists(t *testing.T) {
	runStrips(t, []stripCase{
		{"pubsub channels", ReplyChannelList, arr(bulk(P+"news"), bulk(P+"chat")), arr(bulk("news"), bulk("chat"))},
		{"pubsub channels none", ReplyChannelList, arr(), ""},
		{"pubsub channels value-like", ReplyChannelList, arr(bulk(P + P + "x")), arr(bulk(P + "x"))},
		{"pubsub numsub", ReplyChannelCounts, arr(bulk(P+"a"), integer(2), bulk(P+"b"), integer(0)), arr(bulk("a"), integer(2), bulk("b"), integer(0))},
		{"pubsub numsub resp3 map", ReplyChannelCounts, mapr(bulk(P+"a"), integer(1)), mapr(bulk("a"), integer(1))},
		{"pubsub numsub none", ReplyChannelCounts, arr(), ""},
		{"pubsub numsub count is not a channel", ReplyChannelCounts, arr(bulk(P+"a"), bulk(P+"1")), arr(bulk("a"), bulk(P+"1"))},
	})
}

func TestStripErrors(t *testing.T) {
	nogroup := "-NOGROUP No such key '" + P + "s' or consumer group 'g' in XREADGROUP with GROUP option\r\n"
	nogroupStripped := "-NOGROUP No such key 's' or consumer group 'g' in XREADGROUP with GROUP option\r\n"
	blob := "NOGROUP No such key '" + P + "s'"
	var cases []stripCase
	for _, k := range allKinds {
		cases = append(cases,
			stripCase{"nogroup", k, nogroup, nogroupStripped},
			stripCase{"two keys", k, "-ERR " + P + "a and " + P + "b\r\n", "-ERR a and b\r\n"},
			stripCase{"no key", k, "-WRONGTYPE Operation against a key holding the wrong kind of value\r\n", ""},
			stripCase{"other tenant untouched", k, "-ERR tenant:t2:x\r\n", ""},
			stripCase{"blob error", k, "!" + strconv.Itoa(len(blob)) + "\r\n" + blob + "\r\n", "!23\r\nNOGROUP No such key 's'\r\n"},
			stripCase{"blob error without key", k, "!21\r\nSYNTAX invalid syntax\r\n", ""},
		)
	}
	runStrips(t, cases)
}

// TestStripValuesUntouched: replies of value commands pass through byte for
// byte, even when a value starts with the tenant's prefix (BullMQ and asynq
// store key names as values).
func TestStripValuesUntouched(t *testing.T) {
	runStrips(t, []stripCase{
		{"get", ReplyRaw, bulk(P + "k"), ""},
		{"mget", ReplyRaw, arr(bulk(P+"a"), nullBulk, bulk("b")), ""},
		{"hgetall resp3", ReplyRaw, mapr(bulk(P+"f"), bulk(P+"v")), ""},
		{"smembers resp3", ReplyRaw, "~1\r\n" + bulk(P+"m"), ""},
		{"lrange", ReplyRaw, arr(bulk(P + "job:1")), ""},
		{"status", ReplyRaw, "+" + P + "x\r\n", ""},
		{"xrange", ReplyRaw, arr(arr(bulk("1-1"), arr(bulk(P+"f"), bulk(P+"v")))), ""},
		{"verbatim", ReplyRaw, "=14\r\ntxt:" + P + "\r\n", ""},
		{"attribute", ReplyRaw, "|1\r\n" + bulk(P+"a") + bulk("b") + bulk(P+"v"), ""},
		{"number", ReplyRaw, integer(7), ""},
		// RESP3 attributes are not stripped into (Redis sends none unasked).
		{"attribute before keys", ReplyKeyList, "|1\r\n+x\r\n+y\r\n" + arr(bulk(P+"a")), ""},
	})
}

func TestStripMalformedUnchanged(t *testing.T) {
	r := NewRewriter(P)
	for _, in := range []string{
		"$20\r\n" + P + "k\r\n",                             // shorter than announced
		"*2\r\n" + bulk(P+"a"),                              // missing element
		"?" + P + "\r\n",                                    // unknown type
		"*x\r\n" + bulk(P+"a"),                              // bad count
		bulk(P+"k") + "trailing",                            // more than one reply
		bulk(P+"k") + bulk(P+"k"),                           //
		arr(bulk(P+"a"), "?bad\r\n"),                        // bad element
		"%1\r\n" + bulk(P+"s"),                              // map without value
		arr(bulk("17"), arr(bulk(P+"a"), bulk(P+"b")), "x"), //
		"$" + P,            // no line end
		"*1\r\n$3\r\n" + P, // bulk overrun
	} {
		for _, k := range allKinds {
			got := r.AppendReply([]byte("prev"), []byte(in), k)
			if string(got) != "prev"+in {
				t.Errorf("%s: AppendReply(%q) = %q; want it unchanged", kindName(k), in, got[4:])
			}
		}
	}
	for _, k := range allKinds {
		if got := r.AppendReply([]byte("prev"), nil, k); string(got) != "prev" {
			t.Errorf("%s: empty reply gives %q", kindName(k), got)
		}
	}
}

func TestStripAllocations(t *testing.T) {
	r := NewRewriter(P)
	var keys []string
	for i := 0; i < 20; i++ {
		keys = append(keys, bulk(P+"key:"+strconv.Itoa(i)))
	}
	scan := []byte(arr(bulk("42"), arr(keys...)))
	dst := make([]byte, 0, 4096)
	if n := testing.AllocsPerRun(100, func() { dst = r.AppendReply(dst[:0], scan, ReplyScan) }); n != 0 {
		t.Errorf("AppendReply(SCAN) allocates %.0f times with a reused dst", n)
	}
}

func TestAppendExecReply(t *testing.T) {
	r := NewRewriter(P)
	nogroup := "-NOGROUP No such key '" + P + "s' or consumer group 'g'\r\n"
	tests := []struct {
		name  string
		in    string
		kinds []ReplyKind
		want  string // "" unchanged
	}{
		{"mixed",
			arr("+OK\r\n", bulk(P+"k"), arr(bulk(P+"l"), bulk(P+"v")), nogroup),
			[]ReplyKind{ReplyRaw, ReplyKey, ReplyKeyFirst, ReplyRaw},
			arr("+OK\r\n", bulk("k"), arr(bulk("l"), bulk(P+"v")), "-NOGROUP No such key 's' or consumer group 'g'\r\n")},
		{"values are not stripped",
			arr(bulk(P+"v"), bulk(P+"k")),
			[]ReplyKind{ReplyRaw, ReplyKey},
			arr(bulk(P+"v"), bulk("k"))},
		{"scan and keys",
			arr(arr(bulk("0"), arr(bulk(P+"a"))), arr(bulk(P+"b"))),
			[]ReplyKind{ReplyScan, ReplyKeyList},
			arr(arr(bulk("0"), arr(bulk("a"))), arr(bulk("b")))},
		{"xread resp3 inside exec",
			arr(mapr(bulk(P+"s"), arr()), integer(1)),
			[]ReplyKind{ReplyStreams, ReplyRaw},
			arr(mapr(bulk("s"), arr()), integer(1))},
		{"empty transaction", arr(), nil, ""},
		{"aborted by WATCH resp2", nullArray, []ReplyKind{ReplyKey}, ""},
		{"aborted by WATCH resp3", null3, []ReplyKind{ReplyKey}, ""},
		{"execabort", "-EXECABORT Transaction discarded because of previous errors.\r\n", []ReplyKind{ReplyKey}, ""},
		{"error naming a key", "-ERR " + P + "k\r\n", nil, "-ERR k\r\n"},
		{"count mismatch", arr(bulk(P+"a"), bulk(P+"b")), []ReplyKind{ReplyKey}, ""},
		{"count mismatch the other way", arr(bulk(P + "a")), []ReplyKind{ReplyKey, ReplyKey}, ""},
		{"incomplete element", "*2\r\n" + bulk(P+"a") + "$9\r\nab", []ReplyKind{ReplyKey, ReplyKey}, ""},
		{"malformed element", "*2\r\n" + bulk(P+"a") + "?\r\n", []ReplyKind{ReplyKey, ReplyKey}, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			want := tt.want
			if want == "" {
				want = tt.in
			}
			in := []byte(tt.in)
			got := r.AppendExecReply([]byte("prev"), in, tt.kinds)
			if string(got) != "prev"+want {
				t.Fatalf("\n in   %q\n got  %q\n want %q", tt.in, got[4:], want)
			}
			if string(in) != tt.in {
				t.Errorf("the upstream reply was modified: %q", in)
			}
		})
	}
}

// TestAppendExecReplyTrailingBytes: like AppendReply, AppendExecReply must
// pass through a reply it cannot vouch for; bytes after the array are
// silently dropped instead (found by FuzzStrip, seed be4db7c453b26071).
func TestAppendExecReplyTrailingBytes(t *testing.T) {
	r := NewRewriter(P)
	for _, tt := range []struct {
		in    string
		kinds []ReplyKind
	}{
		{"*0\r\n000000000000", nil},
		{arr(bulk(P+"k")) + "junk", []ReplyKind{ReplyKey}},
		{arr(bulk(P+"k")) + bulk(P+"k"), []ReplyKind{ReplyKey}},
	} {
		if got := r.AppendExecReply(nil, []byte(tt.in), tt.kinds); string(got) != tt.in {
			t.Errorf("AppendExecReply(%q) = %q; want it unchanged (AppendReply(%q) gives %q)",
				tt.in, got, tt.in, r.AppendReply(nil, []byte(tt.in), ReplyKey))
		}
	}
}

// TestAppendPushTrailingBytes: AppendPush, and AppendReply with
// ReplyChannelMsg that delegates to it, parse the frame's elements and drop
// whatever follows; every other AppendReply kind passes such input through
// unchanged (found by FuzzStrip, seed fd8ffda1a4c24e46).
func TestAppendPushTrailingBytes(t *testing.T) {
	r := NewRewriter(P)
	for _, in := range []string{
		"*3\r\n$9\r\nsubscribe\r\n#\r\n#\r\n0",
		arr(bulk("message"), bulk(P+"ch"), bulk("v")) + "junk",
		arr(bulk("subscribe"), bulk(P+"a"), integer(1)) + arr(bulk("subscribe"), bulk(P+"b"), integer(2)),
	} {
		if got := r.AppendReply(nil, []byte(in), ReplyChannelMsg); string(got) != in {
			t.Errorf("AppendReply(%q, ReplyChannelMsg) = %q; want it unchanged", in, got)
		}
		if got, info := r.AppendPush(nil, []byte(in), false); info.Kind != PushNone || len(got) != 0 {
			t.Errorf("AppendPush(%q) = %q, %+v; want PushNone (not one frame)", in, got, info)
		}
	}
}

// TestSplitExec: the elements of an EXEC reply, or ok false for a reply
// that is not exactly one array of whole replies.
func TestSplitExec(t *testing.T) {
	tests := []struct {
		in   string
		want []string // nil: not ok
	}{
		{arr("+OK\r\n", bulk("v"), arr(bulk("a"))), []string{"+OK\r\n", bulk("v"), arr(bulk("a"))}},
		{arr(), []string{}},
		{nullArray, nil},
		{null3, nil},
		{"-EXECABORT Transaction discarded because of previous errors.\r\n", nil},
		{arr(bulk("k")) + "junk", nil},
		{"*2\r\n" + bulk("a") + "$9\r\nab", nil},
		{"*2\r\n" + bulk("a") + "?\r\n", nil},
		{"*99999999\r\n", nil},
	}
	for _, tt := range tests {
		got, ok := SplitExec([]byte(tt.in))
		if ok != (tt.want != nil) || len(got) != len(tt.want) {
			t.Errorf("SplitExec(%q) = %q, %v; want %q", tt.in, got, ok, tt.want)
			continue
		}
		for i := range got {
			if string(got[i]) != tt.want[i] {
				t.Errorf("SplitExec(%q)[%d] = %q, want %q", tt.in, i, got[i], tt.want[i])
			}
		}
	}
}
