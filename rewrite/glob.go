package rewrite

// GlobMatch reports whether s matches pattern under Redis's glob rules
// (stringmatchlen): '*' any run, '?' one byte, '[…]' a class with '^'
// negation and 'a-z' ranges, '\' quoting the next byte. keyfence matches a
// tenant's PSUBSCRIBE patterns itself, against its own channel names, so
// that a pattern can never reach past the tenant's namespace upstream.
//
// It backtracks only to the last '*', which keeps it O(len(pattern) ×
// len(s)) where a naive recursion is exponential.
func GlobMatch(pattern, s []byte) bool {
	p, i := 0, 0
	starP, starI := -1, 0
	for i < len(s) {
		if p < len(pattern) {
			switch c := pattern[p]; c {
			case '*':
				for p < len(pattern) && pattern[p] == '*' {
					p++
				}
				if p == len(pattern) {
					return true
				}
				starP, starI = p, i
				continue
			case '?':
				p++
				i++
				continue
			case '[':
				if ok, next := matchClass(pattern, p, s[i]); ok {
					p = next
					i++
					continue
				}
			case '\\':
				if p+1 < len(pattern) {
					if pattern[p+1] == s[i] {
						p += 2
						i++
						continue
					}
				} else if c == s[i] {
					p++
					i++
					continue
				}
			default:
				if c == s[i] {
					p++
					i++
					continue
				}
			}
		}
		if starP < 0 {
			return false
		}
		starI++
		p, i = starP, starI
	}
	for p < len(pattern) && pattern[p] == '*' {
		p++
	}
	return p == len(pattern)
}

// matchClass matches c against the class starting at pattern[p] == '['
// and returns where the pattern goes on after it. An unterminated class
// runs to the end of the pattern, as in Redis.
func matchClass(pattern []byte, p int, c byte) (bool, int) {
	p++
	not := p < len(pattern) && pattern[p] == '^'
	if not {
		p++
	}
	match := false
	for p < len(pattern) && pattern[p] != ']' {
		switch {
		case pattern[p] == '\\' && p+1 < len(pattern):
			p++
			if pattern[p] == c {
				match = true
			}
		case p+2 < len(pattern) && pattern[p+1] == '-':
			lo, hi := pattern[p], pattern[p+2]
			if lo > hi {
				lo, hi = hi, lo
			}
			if c >= lo && c <= hi {
				match = true
			}
			p += 2
		default:
			if pattern[p] == c {
				match = true
			}
		}
		p++
	}
	if p < len(pattern) {
		p++ // the closing ']'
	}
	return match != not, p
}
