package front

import (
	"encoding/json"
	"strings"
)

// rpcInfo is what the front needs from a POST body: the JSON-RPC method
// and whether the message carries a non-null id. It is read by one scan
// that allocates nothing on the common path, in place of decoding the body
// with encoding/json once per question (that cost the front ~5 % of its
// CPU and a third of its garbage besides the copy buffers).
type rpcInfo struct {
	// ok: the body is one JSON object whose "method", if present, is a
	// string or null (what decoding it into a struct with a string Method
	// accepts). A batch, a non-object or a malformed body is not ok.
	ok bool
	// method is the method's bytes, unescaped; it aliases the body unless
	// the key or value held escapes.
	method []byte
	// hasID: an "id" member whose value is not null.
	hasID bool
}

// isRequest: a JSON-RPC request (a method and an id), not a notification
// or a response.
func (m rpcInfo) isRequest() bool { return m.ok && len(m.method) > 0 && m.hasID }

// readOnly: a message whose method only reads, so sending it twice is
// harmless.
func (m rpcInfo) readOnly() bool { return m.ok && readOnlyMethods[string(m.method)] }

// maxScanDepth bounds the nesting scanRPC follows (encoding/json refuses
// deeper documents too), so a hostile body cannot exhaust the stack.
const maxScanDepth = 10000

// scanRPC reads the top-level members of body. It matches member names as
// encoding/json does (case-insensitively, after unescaping; the last of
// duplicated names wins). It checks the structure it walks (brackets,
// strings, literals) but is more lenient than a full JSON validator on the
// spelling of numbers and of escapes in the values it skips: a body it accepts that a worker then rejects as
// malformed is answered with a parse error, which nothing resends and
// which changes nothing, so the leniency cannot make a retry unsafe.
func scanRPC(body []byte) rpcInfo {
	var info rpcInfo
	s := scanner{b: body}
	s.space()
	if !s.consume('{') {
		return rpcInfo{}
	}
	s.space()
	if s.consume('}') {
		info.ok = s.end()
		return info
	}
	for {
		s.space()
		key, kEsc, ok := s.str()
		if !ok {
			return rpcInfo{}
		}
		s.space()
		if !s.consume(':') {
			return rpcInfo{}
		}
		s.space()
		if kEsc {
			if key, ok = unescape(key); !ok {
				return rpcInfo{}
			}
		}
		switch {
		case asciiFold(key, "method"):
			if s.peek() == 'n' {
				// null leaves an earlier "method" in place, as decoding
				// null into a string does.
				if !s.literal("null") {
					return rpcInfo{}
				}
				break
			}
			v, vEsc, ok := s.str()
			if !ok {
				return rpcInfo{} // a number or an object: not a method
			}
			if vEsc {
				if v, ok = unescape(v); !ok {
					return rpcInfo{}
				}
			}
			info.method = v
		case asciiFold(key, "id"):
			start := s.i
			if !s.value(0) {
				return rpcInfo{}
			}
			info.hasID = string(s.b[start:s.i]) != "null"
		default:
			if !s.value(0) {
				return rpcInfo{}
			}
		}
		s.space()
		if s.consume(',') {
			continue
		}
		if s.consume('}') {
			info.ok = s.end()
			if !info.ok {
				return rpcInfo{}
			}
			return info
		}
		return rpcInfo{}
	}
}

// asciiFold reports whether b equals the lower-case ASCII name ignoring
// ASCII case. For "method" and "id" this is exactly encoding/json's
// matching: none of their letters has a non-ASCII case fold (as k and s
// do).
func asciiFold(b []byte, name string) bool {
	if len(b) != len(name) {
		return false
	}
	for i := range len(b) {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != name[i] {
			return false
		}
	}
	return true
}

// unescape decodes the raw contents of a JSON string holding escapes (the
// rare path: clients do not escape method names).
func unescape(raw []byte) ([]byte, bool) {
	var s string
	q := make([]byte, 0, len(raw)+2)
	q = append(append(append(q, '"'), raw...), '"')
	if json.Unmarshal(q, &s) != nil {
		return nil, false
	}
	return []byte(s), true
}

// scanner walks a JSON document byte by byte.
type scanner struct {
	b []byte
	i int
}

func (s *scanner) peek() byte {
	if s.i < len(s.b) {
		return s.b[s.i]
	}
	return 0
}

func (s *scanner) consume(c byte) bool {
	if s.i < len(s.b) && s.b[s.i] == c {
		s.i++
		return true
	}
	return false
}

func (s *scanner) space() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

// end: nothing but white space follows.
func (s *scanner) end() bool {
	s.space()
	return s.i == len(s.b)
}

func (s *scanner) literal(lit string) bool {
	if len(s.b)-s.i >= len(lit) && string(s.b[s.i:s.i+len(lit)]) == lit {
		s.i += len(lit)
		return true
	}
	return false
}

// str reads a string and returns its raw contents (between the quotes)
// and whether they hold escapes.
func (s *scanner) str() (raw []byte, escaped, ok bool) {
	if !s.consume('"') {
		return nil, false, false
	}
	start := s.i
	for s.i < len(s.b) {
		switch c := s.b[s.i]; {
		case c == '"':
			raw = s.b[start:s.i]
			s.i++
			return raw, escaped, true
		case c == '\\':
			escaped = true
			s.i += 2 // the escaped byte cannot end the string
		case c < 0x20:
			return nil, false, false // control characters must be escaped
		default:
			s.i++
		}
	}
	return nil, false, false
}

// value skips one value.
func (s *scanner) value(depth int) bool {
	if depth > maxScanDepth {
		return false
	}
	switch c := s.peek(); {
	case c == '"':
		_, _, ok := s.str()
		return ok
	case c == '{':
		return s.container('}', depth, true)
	case c == '[':
		return s.container(']', depth, false)
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || ('0' <= c && c <= '9'):
		start := s.i
		for s.i < len(s.b) && strings.IndexByte("+-.eE0123456789", s.b[s.i]) >= 0 {
			s.i++
		}
		return s.i > start
	}
	return false
}

// container skips an object (members: name, colon, value) or an array,
// its opening bracket first.
func (s *scanner) container(closer byte, depth int, members bool) bool {
	s.i++
	s.space()
	if s.consume(closer) {
		return true
	}
	for {
		s.space()
		if members {
			if _, _, ok := s.str(); !ok {
				return false
			}
			s.space()
			if !s.consume(':') {
				return false
			}
			s.space()
		}
		if !s.value(depth + 1) {
			return false
		}
		s.space()
		if s.consume(',') {
			continue
		}
		return s.consume(closer)
	}
}
