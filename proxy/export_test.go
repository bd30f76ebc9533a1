package proxy

// Cached looks req (a fallback.AppendRequest of upstream names) up in the
// server's read cache, for tests in package proxy_test that must know an
// entry is there (or gone) before they cause an outage.
func (s *Server) Cached(db int, req []byte) ([]byte, bool) {
	if s.res == nil || s.res.cache == nil {
		return nil, false
	}
	return s.res.cache.Lookup(s.prefix, db, req)
}

// CachedRESP3 is Cached for the entries RESP3 sessions filled.
func (s *Server) CachedRESP3(db int, req []byte) ([]byte, bool) {
	if s.res == nil || s.res.cache == nil {
		return nil, false
	}
	return s.res.cache.Lookup(s.res.ns3, db, req)
}

// TrackingID is the CLIENT ID of the read cache's tracking connection, 0
// while there is none.
func (s *Server) TrackingID() int64 {
	if s.res == nil {
		return 0
	}
	return s.res.trackID.Load()
}
