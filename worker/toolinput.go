package worker

import (
	"encoding/json"
	"math"

	"github.com/google/jsonschema-go/jsonschema"
)

// flatSchema is a tool input schema simple enough to check without
// jsonschema-go: an object whose properties each only have a type among
// string, number, integer, boolean and null, some of them required,
// others allowed or not. Most tools' schemas are of this kind (every
// struct of scalar fields jsonschema.For infers), and jsonschema-go's
// Validate, which walks the schema by reflection, cost more allocations
// than the rest of an echo tools/call.
//
// It only ever says "valid" where jsonschema-go would: arguments it does
// not pass go to Validate, so an invalid input gets the library's error
// as before.
type flatSchema struct {
	props    map[string]typeSet
	required []string
	closed   bool // additionalProperties false: no other members
}

// typeSet is a set of JSON types, one bit each.
type typeSet uint8

const (
	typeString typeSet = 1 << iota
	typeNumber
	typeInteger
	typeBoolean
	typeNull
)

var typeBits = map[string]typeSet{
	"string": typeString, "number": typeNumber, "integer": typeInteger,
	"boolean": typeBoolean, "null": typeNull,
}

// compileFlatSchema returns s as a flatSchema, or nil when s uses
// anything else (then every input goes to Validate). It reads s from its
// JSON, so a keyword it does not know, present or added in a later
// jsonschema-go, makes it decline rather than ignore the keyword.
func compileFlatSchema(s *jsonschema.Schema) *flatSchema {
	b, err := json.Marshal(s)
	if err != nil {
		return nil
	}
	var root map[string]json.RawMessage
	if json.Unmarshal(b, &root) != nil {
		return nil
	}
	f := &flatSchema{props: map[string]typeSet{}}
	for k, v := range root {
		switch k {
		case "title", "description":
		case "type":
			var t string
			if json.Unmarshal(v, &t) != nil || t != "object" {
				return nil
			}
		case "required":
			if json.Unmarshal(v, &f.required) != nil {
				return nil
			}
		case "additionalProperties":
			// false, or the schema that matches nothing ({"not": {}}).
			var open bool
			if json.Unmarshal(v, &open) == nil && !open {
				f.closed = true
				continue
			}
			var not map[string]map[string]any
			if json.Unmarshal(v, &not) != nil || len(not) != 1 || not["not"] == nil || len(not["not"]) != 0 {
				return nil
			}
			f.closed = true
		case "properties":
			var props map[string]map[string]json.RawMessage
			if json.Unmarshal(v, &props) != nil {
				return nil
			}
			for name, p := range props {
				t, ok := propertyTypes(p)
				if !ok {
					return nil
				}
				f.props[name] = t
			}
		default:
			return nil
		}
	}
	if _, ok := root["type"]; !ok {
		return nil
	}
	return f
}

// propertyTypes reads a property's schema that has a type and nothing
// else but annotations.
func propertyTypes(p map[string]json.RawMessage) (typeSet, bool) {
	var set typeSet
	for k, v := range p {
		switch k {
		case "title", "description":
		case "type":
			var one string
			var many []string
			switch {
			case json.Unmarshal(v, &one) == nil:
				many = []string{one}
			case json.Unmarshal(v, &many) == nil && len(many) > 0:
			default:
				return 0, false
			}
			for _, t := range many {
				bit, ok := typeBits[t]
				if !ok {
					return 0, false
				}
				set |= bit
			}
		default:
			return 0, false
		}
	}
	return set, set != 0
}

// valid reports whether args (as encoding/json decodes an object into
// map[string]any) surely pass the schema; false means "ask Validate".
func (f *flatSchema) valid(args map[string]any) bool {
	for _, name := range f.required {
		if _, ok := args[name]; !ok {
			return false
		}
	}
	for k, v := range args {
		t, ok := f.props[k]
		if !ok {
			if f.closed {
				return false
			}
			continue
		}
		if !t.has(v) {
			return false
		}
	}
	return true
}

// has reports whether v's JSON type is in t, as JSON Schema types it: a
// number without a fraction is an integer, and an integer is a number.
func (t typeSet) has(v any) bool {
	switch v := v.(type) {
	case string:
		return t&typeString != 0
	case bool:
		return t&typeBoolean != 0
	case nil:
		return t&typeNull != 0
	case float64:
		if _, frac := math.Modf(v); frac == 0 {
			return t&(typeInteger|typeNumber) != 0
		}
		return t&typeNumber != 0
	}
	return false
}
