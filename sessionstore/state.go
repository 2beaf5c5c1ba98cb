package sessionstore

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// State limits.
const (
	MaxStateKeyBytes       = 256
	MaxStateKeysPerSession = 10_000
	// maxListStateBytes bounds a ListState answer (the RPC has no paging):
	// a larger one is refused asking for a narrower prefix.
	maxListStateBytes = 64 << 20
)

// A stored state value is its 8-byte big-endian version then the value.
func decodeState(key string, v []byte) (*pb.StateEntry, error) {
	if len(v) < 8 {
		return nil, fmt.Errorf("stored state key %q is malformed", key)
	}
	return &pb.StateEntry{Key: key, Version: binary.BigEndian.Uint64(v[:8]), Value: bytes.Clone(v[8:])}, nil
}

func encodeState(version uint64, value []byte) []byte {
	return append(binary.BigEndian.AppendUint64(make([]byte, 0, 8+len(value)), version), value...)
}

// putState writes cmd.Key = cmd.Data at the next version, if
// cmd.ExpectedVersion matches when set (0: the key must be absent).
// A key deleted and written again starts again at version 1.
func putState(st shardTx, cmd command) (outcome, error) {
	b, err := st.bucket(bkState)
	if err != nil {
		return outcome{}, err
	}
	k := childKey(cmd.ID, cmd.Key)
	var cur uint64
	v := b.Get(k)
	if v != nil {
		if len(v) < 8 {
			return outcome{}, fmt.Errorf("stored state key %q of session %q is malformed", cmd.Key, cmd.ID)
		}
		cur = binary.BigEndian.Uint64(v[:8])
	}
	if cmd.HasExpected && cmd.ExpectedVersion != cur {
		return outcome{Status: statusItemConflict(cmd.ID, "state key", cmd.Key, cmd.ExpectedVersion, cur)}, nil
	}
	if v == nil {
		metaB, meta, err := loadMeta(st, cmd.ID)
		if err != nil {
			return outcome{}, err
		}
		if meta.StateKeys >= cmd.Limits.MaxStateKeys {
			return outcome{Status: statusLimit(cmd.ID, "state_keys_per_session", cmd.Limits.MaxStateKeys,
				fmt.Sprintf("cannot add state key %q: the session has %d keys", cmd.Key, meta.StateKeys))}, nil
		}
		meta.StateKeys++
		if err := saveMeta(metaB, cmd.ID, meta); err != nil {
			return outcome{}, err
		}
	}
	if err := b.Put(k, encodeState(cur+1, cmd.Data)); err != nil {
		return outcome{}, err
	}
	return outcome{Entry: &pb.StateEntry{Key: cmd.Key, Value: cmd.Data, Version: cur + 1}}, nil
}

// deleteState removes cmd.Key; an absent key is not an error.
func deleteState(st shardTx, cmd command) (outcome, error) {
	b, err := st.bucket(bkState)
	if err != nil {
		return outcome{}, err
	}
	k := childKey(cmd.ID, cmd.Key)
	if b.Get(k) == nil {
		return outcome{}, nil
	}
	if err := b.Delete(k); err != nil {
		return outcome{}, err
	}
	metaB, meta, err := loadMeta(st, cmd.ID)
	if err != nil {
		return outcome{}, err
	}
	meta.StateKeys = max(meta.StateKeys-1, 0)
	return outcome{}, saveMeta(metaB, cmd.ID, meta)
}

func getState(st shardTx, id, key string) (*pb.StateEntry, error) {
	b := st.existing(bkState)
	if b == nil {
		return nil, nil
	}
	v := b.Get(childKey(id, key))
	if v == nil {
		return nil, nil
	}
	return decodeState(key, v)
}

// listState returns the entries whose key starts with prefix, in key order.
func listState(st shardTx, id, prefix string) ([]*pb.StateEntry, error) {
	b := st.existing(bkState)
	if b == nil {
		return nil, nil
	}
	cp := childPrefix(id)
	p := childKey(id, prefix)
	var out []*pb.StateEntry
	total := 0
	c := b.Cursor()
	for k, v := c.Seek(p); k != nil && bytes.HasPrefix(k, p); k, v = c.Next() {
		total += len(k) + len(v)
		if total > maxListStateBytes {
			return nil, statusLimit(id, "list_state_bytes", maxListStateBytes,
				fmt.Sprintf("the state under prefix %q is larger than one answer may be; list narrower prefixes", prefix)).Err()
		}
		e, err := decodeState(string(k[len(cp):]), v)
		if err != nil {
			return nil, err
		}
		out = append(out, e)
	}
	return out, nil
}

// checkName refuses a name that is empty, longer than
// maxLen or not visible ASCII.
func checkName(what, name string, maxLen int) error {
	if name == "" {
		return status.Errorf(codes.InvalidArgument, "%s is empty", what)
	}
	return checkChars(what, name, maxLen)
}

func checkChars(what, name string, maxLen int) error {
	if len(name) > maxLen {
		return status.Errorf(codes.InvalidArgument, "%s is %d bytes; the limit is %d bytes", what, len(name), maxLen)
	}
	for i := 0; i < len(name); i++ {
		if c := name[i]; c < 0x21 || c > 0x7e {
			return status.Errorf(codes.InvalidArgument, "%s %q: byte %d (0x%02x) is not visible ASCII (0x21..0x7e)", what, name, i, c)
		}
	}
	return nil
}

func (s *service) GetState(ctx context.Context, req *pb.GetStateRequest) (*pb.GetStateResponse, error) {
	id, key := req.GetSessionId(), req.GetKey()
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := checkName("key", key, MaxStateKeyBytes); err != nil {
		return nil, err
	}
	var e *pb.StateEntry
	err := s.n.viewSession(ctx, id, func(st shardTx) error {
		var err error
		e, err = getState(st, id, key)
		return err
	})
	if err != nil {
		return nil, err
	}
	if e == nil {
		return nil, statusKeyNotFound(id, key).Err()
	}
	return &pb.GetStateResponse{Entry: e}, nil
}

func (s *service) PutState(ctx context.Context, req *pb.PutStateRequest) (*pb.PutStateResponse, error) {
	if err := s.n.checkMutation(req.GetSessionId(), req.GetRequestId(), req.GetValue()); err != nil {
		return nil, err
	}
	if err := checkName("key", req.GetKey(), MaxStateKeyBytes); err != nil {
		return nil, err
	}
	out, err := s.n.apply(ctx, command{
		Op: opPutState, ID: req.GetSessionId(), Key: req.GetKey(), Data: req.GetValue(),
		HasExpected: req.ExpectedVersion != nil, ExpectedVersion: req.GetExpectedVersion(),
		RequestID: req.GetRequestId(),
	})
	if err != nil {
		return nil, err
	}
	return &pb.PutStateResponse{Entry: out.Entry}, nil
}

func (s *service) DeleteState(ctx context.Context, req *pb.DeleteStateRequest) (*pb.DeleteStateResponse, error) {
	if err := s.n.checkMutation(req.GetSessionId(), req.GetRequestId(), nil); err != nil {
		return nil, err
	}
	if err := checkName("key", req.GetKey(), MaxStateKeyBytes); err != nil {
		return nil, err
	}
	if _, err := s.n.apply(ctx, command{Op: opDeleteState, ID: req.GetSessionId(), Key: req.GetKey(), RequestID: req.GetRequestId()}); err != nil {
		return nil, err
	}
	return &pb.DeleteStateResponse{}, nil
}

func (s *service) ListState(ctx context.Context, req *pb.ListStateRequest) (*pb.ListStateResponse, error) {
	id, prefix := req.GetSessionId(), req.GetPrefix()
	if err := checkID(id); err != nil {
		return nil, err
	}
	if err := checkChars("prefix", prefix, MaxStateKeyBytes); err != nil {
		return nil, err
	}
	var entries []*pb.StateEntry
	err := s.n.viewSession(ctx, id, func(st shardTx) error {
		var err error
		entries, err = listState(st, id, prefix)
		return err
	})
	if err != nil {
		return nil, err
	}
	return &pb.ListStateResponse{Entries: entries}, nil
}
