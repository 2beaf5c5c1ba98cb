package front

import (
	"encoding/json"
	"strings"
	"testing"
)

// decodeRPC is what the front did before scanRPC, and what workers do:
// decode the body with encoding/json. scanRPC must agree with it on every
// question the front asks.
func decodeRPC(body []byte) (isReq, readOnly bool) {
	var msg struct {
		ID     json.RawMessage `json:"id"`
		Method string          `json:"method"`
	}
	if json.Unmarshal(body, &msg) != nil {
		return false, false
	}
	return msg.Method != "" && len(msg.ID) > 0 && string(msg.ID) != "null", readOnlyMethods[msg.Method]
}

var rpcBodies = []string{
	`{"jsonrpc":"2.0","id":1,"method":"tools/list"}`,
	`{"jsonrpc":"2.0","id":"a-b","method":"tools/call","params":{"name":"echo","arguments":{"text":"x\"}y","n":[1,2.5e3,-3,{"method":"ping"}]}}}`,
	` { "method" : "ping" , "id" : 7 } `,
	"{\n\t\"id\": 1,\r\n\"method\": \"resources/read\"}\n",
	`{"jsonrpc":"2.0","method":"notifications/initialized"}`,
	`{"jsonrpc":"2.0","method":"ping"}`,
	`{"jsonrpc":"2.0","id":null,"method":"ping"}`,
	`{"jsonrpc":"2.0","id":1,"method":null}`,
	`{"jsonrpc":"2.0","id":1,"method":"ping","method":null}`,
	`{"jsonrpc":"2.0","id":1,"method":"ping","method":"tools/call"}`,
	`{"jsonrpc":"2.0","id":1,"method":"tools/call","Method":"ping"}`,
	`{"jsonrpc":"2.0","ID":1,"METHOD":"tools/list"}`,
	`{"jsonrpc":"2.0","id":1,"id":null,"method":"ping"}`,
	`{"jsonrpc":"2.0","id":null,"id":{},"method":"ping"}`,
	`{"jsonrpc":"2.0","id":1,"\u006dethod":"ping"}`,
	`{"jsonrpc":"2.0","id":1,"method":"tools\/list"}`,
	`{"jsonrpc":"2.0","id":1,"method":"p\u0069ng"}`,
	`{"jsonrpc":"2.0","id":1,"method":"p\qng"}`,
	`{"jsonrpc":"2.0","id":1,"method":7}`,
	`{"jsonrpc":"2.0","id":1,"method":["ping"]}`,
	`{"jsonrpc":"2.0","id":1,"method":"ping",}`,
	`{"jsonrpc":"2.0","id":1,"method":"ping"`,
	`{"jsonrpc":"2.0","id":1,"method":"ping"}x`,
	`{"jsonrpc":"2.0","id":1,"method":"ping"}{}`,
	`{"jsonrpc":"2.0","id":1 "method":"ping"}`,
	`{"jsonrpc":"2.0","id":1,"method":"pi` + "\n" + `ng"}`,
	`{"jsonrpc":"2.0","id":tru,"method":"ping"}`,
	`{"jsonrpc":"2.0","id":[1,{"a":[]}],"method":"ping"}`,
	`{"jsonrpc":"2.0","params":{"a":{"b":[[[]]]}},"method":"ping","id":0}`,
	`{"jsonrpc":"2.0","params":{"a":{"b":[[[]]}},"method":"ping","id":0}`,
	`{"jsonrpc":"2.0","params":{"a" 1},"method":"ping","id":0}`,
	`[{"jsonrpc":"2.0","id":1,"method":"tools/list"}]`,
	`{}`, ` {} `, `{`, `}`, `null`, `"ping"`, `1`, ``, `not json`,
	`{"method":"ping","id":1,"x":"\\"}`,
	`{"method":"ping","id":1,"x":"\\\"}`,
	`{"method":"","id":1}`,
	`{"method":"ping","id":""}`,
}

func TestScanRPCAgreesWithDecoding(t *testing.T) {
	for _, b := range rpcBodies {
		wantReq, wantRO := decodeRPC([]byte(b))
		m := scanRPC([]byte(b))
		if m.isRequest() != wantReq || m.readOnly() != wantRO {
			t.Errorf("%s: scanRPC says request %v, read-only %v; encoding/json says %v, %v", b, m.isRequest(), m.readOnly(), wantReq, wantRO)
		}
	}
}

// A body nested past any sane depth is refused, not followed until the
// stack runs out.
func TestScanRPCDeepNesting(t *testing.T) {
	b := `{"id":1,"method":"ping","p":` + strings.Repeat("[", 200000) + strings.Repeat("]", 200000) + `}`
	if m := scanRPC([]byte(b)); m.ok {
		t.Fatal("a body nested 200000 deep was accepted")
	}
}

// The front scans every POST: the common request must cost no allocation.
func TestScanRPCDoesNotAllocate(t *testing.T) {
	body := []byte(`{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`)
	n := testing.AllocsPerRun(100, func() {
		if m := scanRPC(body); !m.isRequest() || m.readOnly() {
			t.Fatal("misread")
		}
	})
	if n != 0 {
		t.Fatalf("scanRPC allocated %v times per call", n)
	}
}

func FuzzScanRPC(f *testing.F) {
	for _, b := range rpcBodies {
		f.Add([]byte(b))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		wantReq, wantRO := decodeRPC(b)
		m := scanRPC(b)
		// scanRPC may accept a malformed body that encoding/json refuses
		// (a bad number or escape in a value it skips; see its comment);
		// on everything else they must agree.
		if !json.Valid(b) && m.ok {
			return
		}
		if m.isRequest() != wantReq || m.readOnly() != wantRO {
			t.Errorf("%q: scanRPC says request %v, read-only %v; encoding/json says %v, %v", b, m.isRequest(), m.readOnly(), wantReq, wantRO)
		}
	})
}

func BenchmarkScanRPC(b *testing.B) {
	body := []byte(`{"jsonrpc":"2.0","id":12,"method":"tools/call","params":{"name":"echo","arguments":{"text":"hello"}}}`)
	for b.Loop() {
		scanRPC(body)
	}
}
