package worker

import (
	"bytes"
	"encoding/json"
)

// members are the top-level members of a JSON-RPC message that Decode
// reads, each nil when absent (a present value is never empty).
type members struct {
	id, jsonrpc, method, params, result, error json.RawMessage
}

// set keeps a member's value under its exact, case-sensitive name
// (JSON-RPC member names are; encoding/json's struct matching is not).
// A later duplicate replaces an earlier one, as decoding into a map does.
func (m *members) set(name string, v json.RawMessage) {
	switch name {
	case "id":
		m.id = v
	case "jsonrpc":
		m.jsonrpc = v
	case "method":
		m.method = v
	case "params":
		m.params = v
	case "result":
		m.result = v
	case "error":
		m.error = v
	}
}

// splitMembers reads the top-level members of body, a JSON object, with
// the values as slices of body. ok is false when body is not valid JSON.
//
// Decoding the message into a map[string]json.RawMessage, as before,
// allocated the map and a copy of every value, and was the largest part
// of the worker's JSON decoding for a tools/call. json.Valid checks the
// syntax here; the scan after it then only has to find where each value
// ends. A member name with an escape in it is decoded by encoding/json
// (the map path), so names compare as their decoded strings.
func splitMembers(body []byte) (m members, ok bool) {
	if !json.Valid(body) {
		return members{}, false
	}
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return members{}, false
	}
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return m, true
	}
	for i < len(body) {
		// A valid object: a name string, ':', a value, then ',' or '}'.
		end := stringEnd(body, i)
		name := body[i+1 : end-1]
		if bytes.IndexByte(name, '\\') >= 0 {
			return splitMembersSlow(body)
		}
		i = skipSpace(body, end)
		i = skipSpace(body, i+1) // past ':'
		vend := valueEnd(body, i)
		m.set(string(name), body[i:vend:vend])
		i = skipSpace(body, vend)
		if body[i] == '}' {
			return m, true
		}
		i = skipSpace(body, i+1) // past ','
	}
	return members{}, false
}

// splitMembersSlow is splitMembers by encoding/json.
func splitMembersSlow(body []byte) (members, bool) {
	var fields map[string]json.RawMessage
	if json.Unmarshal(body, &fields) != nil {
		return members{}, false
	}
	var m members
	for k, v := range fields {
		m.set(k, v)
	}
	return m, true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\r' || b[i] == '\n') {
		i++
	}
	return i
}

// stringEnd is the index after the closing quote of the valid JSON
// string starting at b[i].
func stringEnd(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++ // the escaped byte ('u' starts 4 hex digits: plain bytes)
		case '"':
			return i + 1
		}
	}
	return len(b)
}

// valueEnd is the index after the valid JSON value starting at b[i].
func valueEnd(b []byte, i int) int {
	switch b[i] {
	case '"':
		return stringEnd(b, i)
	case '{', '[':
		depth := 0
		for i < len(b) {
			switch b[i] {
			case '"':
				i = stringEnd(b, i)
				continue
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
			i++
		}
		return len(b)
	}
	// A number, true, false or null: up to the next delimiter.
	for i < len(b) {
		switch b[i] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return i
		}
		i++
	}
	return i
}
