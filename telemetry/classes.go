package telemetry

import "bytes"

// The classes of error replies clients see (keyfence.client.errors, label
// class). Most are the Redis error prefix, which is what the OpenTelemetry
// database conventions call db.response.status_code for Redis; two are
// keyfence's own: UNAVAILABLE (keyfence could not get upstream's reply, or the
// breaker stopped it) and LIMIT (a keyfence capacity limit said no). A prefix
// not in the list is OTHER: the label takes values from this set only, never
// from what a client or Redis sent.
const (
	classERR = iota
	classWRONGTYPE
	classNOAUTH
	classWRONGPASS
	classNOPERM
	classNOSCRIPT
	classEXECABORT
	classCROSSSLOT
	classBUSYKEY
	classNOGROUP
	classNOPROTO
	classOOM
	classBUSY
	classLOADING
	classREADONLY
	classMASTERDOWN
	classCLUSTERDOWN
	classNOREPLICAS
	classTRYAGAIN
	classMOVED
	classASK
	classUNAVAILABLE
	classLIMIT
	classOTHER
	numClasses
)

var classNames = [numClasses]string{
	"ERR", "WRONGTYPE", "NOAUTH", "WRONGPASS", "NOPERM", "NOSCRIPT", "EXECABORT", "CROSSSLOT", "BUSYKEY", "NOGROUP", "NOPROTO",
	"OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS", "TRYAGAIN", "MOVED", "ASK",
	"UNAVAILABLE", "LIMIT", "OTHER",
}

// ServerClasses are the classes that say keyfence or Redis failed a request
// that was fine, as opposed to a client's own mistake (WRONGTYPE, NOPERM, a
// syntax ERR…). The availability alert counts these; it is kept here, beside
// the classes, and the alert rules' test checks that they agree.
var ServerClasses = []string{"UNAVAILABLE", "LIMIT", "OOM", "BUSY", "LOADING", "READONLY", "MASTERDOWN", "CLUSTERDOWN", "NOREPLICAS", "TRYAGAIN"}

var serverClass = func() (set [numClasses]bool) {
	for _, name := range ServerClasses {
		for c, n := range classNames {
			if n == name {
				set[c] = true
			}
		}
	}
	return set
}()

// Phrases of keyfence's own errors that get a class of their own.
var (
	phraseUnavailable = []byte("keyfence: upstream unavailable")
	phrasePinned      = []byte("keyfence: too many pinned")
	phraseBudget      = []byte("keyfence: request buffer budget")
)

// errorClass classifies an error reply ("-PREFIX message\r\n"). It does not
// allocate: the prefix is compared in place.
func errorClass(reply []byte) int {
	if len(reply) < 2 || reply[0] != '-' {
		return classOTHER
	}
	line := reply[1:]
	if i := bytes.IndexByte(line, '\r'); i >= 0 {
		line = line[:i]
	}
	word, rest := line, []byte(nil)
	if i := bytes.IndexByte(line, ' '); i >= 0 {
		word, rest = line[:i], line[i+1:]
	}
	switch {
	case bytes.HasPrefix(rest, phraseUnavailable):
		return classUNAVAILABLE
	case bytes.HasPrefix(rest, phrasePinned), bytes.HasPrefix(rest, phraseBudget):
		return classLIMIT
	}
	switch string(word) { // no allocation: the compiler compares in place
	case "ERR":
		return classERR
	case "WRONGTYPE":
		return classWRONGTYPE
	case "NOAUTH":
		return classNOAUTH
	case "WRONGPASS":
		return classWRONGPASS
	case "NOPERM":
		return classNOPERM
	case "NOSCRIPT":
		return classNOSCRIPT
	case "EXECABORT":
		return classEXECABORT
	case "CROSSSLOT":
		return classCROSSSLOT
	case "BUSYKEY":
		return classBUSYKEY
	case "NOGROUP":
		return classNOGROUP
	case "NOPROTO":
		return classNOPROTO
	case "OOM":
		return classOOM
	case "BUSY":
		return classBUSY
	case "LOADING":
		return classLOADING
	case "READONLY":
		return classREADONLY
	case "MASTERDOWN":
		return classMASTERDOWN
	case "CLUSTERDOWN":
		return classCLUSTERDOWN
	case "NOREPLICAS":
		return classNOREPLICAS
	case "TRYAGAIN":
		return classTRYAGAIN
	case "MOVED":
		return classMOVED
	case "ASK":
		return classASK
	}
	return classOTHER
}
