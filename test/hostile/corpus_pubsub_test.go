package hostile

import "time"

// pubsubAttempts subscribe acme to everything that could reach beta's
// channels or keyspace events while beta is active, and publish to beta's
// channel names. acme must receive only its own marker; beta's subscriber
// must receive nothing from acme (checked by the harness).
func pubsubAttempts() []attempt {
	var out []attempt
	watch := func(name string, sub ...string) attempt {
		return attempt{name: name, category: catPubSub, run: func(a *act) { a.subscribeAndWatch(sub...) }}
	}
	for _, s := range []struct{ name, cmd, arg string }{
		{"sub-beta-channel", "SUBSCRIBE", betaPrefix + betaChannel},
		{"sub-bare-channel", "SUBSCRIBE", betaChannel},
		{"sub-keyevent-set", "SUBSCRIBE", "__keyevent@0__:set"},
		{"sub-keyevent-del", "SUBSCRIBE", "__keyevent@0__:del"},
		{"sub-keyevent-expire", "SUBSCRIBE", "__keyevent@0__:expire"},
		{"sub-keyspace-beta-key", "SUBSCRIBE", "__keyspace@0__:" + betaPrefix + "act-x"},
		{"psub-star", "PSUBSCRIBE", "*"},
		{"psub-beta-prefix", "PSUBSCRIBE", betaPrefix + "*"},
		{"psub-tenant", "PSUBSCRIBE", "tenant:*"},
		{"psub-keyspace-all", "PSUBSCRIBE", "__keyspace@0__:*"},
		{"psub-keyspace-anydb", "PSUBSCRIBE", "__keyspace@*__:*"},
		{"psub-keyevent-any", "PSUBSCRIBE", "__keyevent@*"},
		{"psub-key-star", "PSUBSCRIBE", "__key*"},
		{"psub-keyspace-beta", "PSUBSCRIBE", "__keyspace@*__:" + betaPrefix + "*"},
		{"psub-class", "PSUBSCRIBE", "[t]enant*"},
		{"psub-class-negated", "PSUBSCRIBE", "[^x]*"},
		{"psub-question", "PSUBSCRIBE", "t?nant:b?ta:*"},
		{"psub-escapes", "PSUBSCRIBE", `\t\e\n\a\n\t*`},
		{"psub-escaped-star", "PSUBSCRIBE", `tenant:beta:\*`},
		{"psub-contains-beta", "PSUBSCRIBE", "*beta*"},
		{"psub-bare-pattern", "PSUBSCRIBE", "alerts.*"},
		{"psub-range", "PSUBSCRIBE", "[a-z]*"},
		{"psub-trailing-backslash", "PSUBSCRIBE", `*\`},
		{"psub-open-class", "PSUBSCRIBE", "[*"},
		{"ssub-bare", "SSUBSCRIBE", betaChannel},
		{"ssub-beta", "SSUBSCRIBE", betaPrefix + betaChannel},
	} {
		out = append(out, watch(s.name, s.cmd, s.arg))
	}
	out = append(out,
		watch("psub-many", "PSUBSCRIBE", "*", "__keyspace@0__:*", "__keyevent@0__:*", betaPrefix+"*"),
		attempt{name: "resp3-psub-star", category: catPubSub, run: func(a *act) {
			c := a.conn()
			a.wantOK("HELLO 3", c.do("HELLO", "3"))
			a.wantReply("PSUBSCRIBE * in RESP3", c.do("PSUBSCRIBE", "*"))
			a.f.betaActivity(a.t)
			c.drain(50 * time.Millisecond)
		}},
		attempt{name: "client-tracking-bcast", category: catPubSub, run: func(a *act) {
			c := a.conn()
			a.wantOK("HELLO 3", c.do("HELLO", "3"))
			a.wantReply("CLIENT TRACKING ON BCAST", c.do("CLIENT", "TRACKING", "ON", "BCAST"))
			a.f.betaActivity(a.t)
			c.drain(50 * time.Millisecond)
		}},
		attempt{name: "client-tracking-bcast-prefix", category: catPubSub, run: func(a *act) {
			c := a.conn()
			a.wantOK("HELLO 3", c.do("HELLO", "3"))
			a.wantReply("CLIENT TRACKING ON BCAST PREFIX", c.do("CLIENT", "TRACKING", "ON", "BCAST", "PREFIX", betaPrefix))
			a.f.betaActivity(a.t)
			c.drain(50 * time.Millisecond)
		}},
		attempt{name: "pubsub-channels", category: catPubSub, run: func(a *act) {
			a.wantStrings("PUBSUB CHANNELS", a.do("PUBSUB", "CHANNELS"))
		}},
		attempt{name: "pubsub-channels-star", category: catPubSub, run: func(a *act) {
			a.wantStrings("PUBSUB CHANNELS *", a.do("PUBSUB", "CHANNELS", "*"))
		}},
		attempt{name: "pubsub-channels-beta", category: catPubSub, run: func(a *act) {
			a.wantStrings("PUBSUB CHANNELS tenant:beta:*", a.do("PUBSUB", "CHANNELS", betaPrefix+"*"))
		}},
		attempt{name: "pubsub-numsub", category: catPubSub, run: func(a *act) {
			r := a.do("PUBSUB", "NUMSUB", betaChannel, betaPrefix+betaChannel, betaEventChan)
			if s := r.v.strs(); r.err != nil || len(s) != 6 || s[1] != "0" || s[3] != "0" || s[5] != "0" {
				a.t.Errorf("PUBSUB NUMSUB must count acme's subscribers only (none): got %s", r)
			}
		}},
		attempt{name: "pubsub-numpat", category: catPubSub, run: func(a *act) {
			a.wantInt("PUBSUB NUMPAT (beta has a pattern, acme none)", a.do("PUBSUB", "NUMPAT"), 0)
		}},
		attempt{name: "pubsub-shardchannels", category: catPubSub, run: func(a *act) {
			a.wantStrings("PUBSUB SHARDCHANNELS", a.do("PUBSUB", "SHARDCHANNELS"))
		}},
		attempt{name: "pubsub-shardnumsub", category: catPubSub, run: func(a *act) {
			r := a.do("PUBSUB", "SHARDNUMSUB", betaChannel)
			if s := r.v.strs(); r.err != nil || len(s) != 2 || s[1] != "0" {
				a.t.Errorf("PUBSUB SHARDNUMSUB must count acme's only: got %s", r)
			}
		}},
	)
	// Publishing to beta's names reaches nobody: the receiver count must be 0.
	for _, p := range []struct{ name, cmd, ch, msg string }{
		{"publish-bare", "PUBLISH", betaChannel, "forged"},
		{"publish-beta", "PUBLISH", betaPrefix + betaChannel, "forged"},
		{"publish-pattern-match", "PUBLISH", betaSyncChannel, "forged"},
		{"publish-beta-pattern-match", "PUBLISH", betaPrefix + betaSyncChannel, "forged"},
		{"publish-keyevent", "PUBLISH", betaEventChan, betaEventKey},
		{"publish-keyevent-full", "PUBLISH", betaEventChan, betaPrefix + betaEventKey},
		{"publish-keyspace", "PUBLISH", "__keyspace@0__:" + betaPrefix + "str", "del"},
		{"spublish-bare", "SPUBLISH", betaChannel, "forged"},
		{"spublish-beta", "SPUBLISH", betaPrefix + betaChannel, "forged"},
	} {
		out = append(out, attempt{name: p.name, category: catPubSub, run: func(a *act) {
			a.wantErrorOr(p.cmd+" "+p.ch, a.do(p.cmd, p.ch, p.msg), func(v val) bool { return v.typ == ':' && v.str == "0" },
				"(integer) 0: no subscriber of acme's listens")
		}})
	}
	return out
}
