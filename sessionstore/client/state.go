package client

import (
	"context"
	"fmt"

	pb "github.com/erlmcp/erlmcp/proto/erlmcp/sessionstore/v1"
)

// StateEntry is one key of a session's key/value state.
type StateEntry struct {
	Key   string
	Value []byte
	// Version starts at 1 and grows by one per write of the key (a key
	// deleted and written again starts again at 1).
	Version uint64
}

func stateFromPB(e *pb.StateEntry) StateEntry {
	return StateEntry{Key: e.GetKey(), Value: e.GetValue(), Version: e.GetVersion()}
}

// GetState reads one key. ErrNotFound when the key is absent
// (ErrSessionNotFound as well when the session is).
func (c *Client) GetState(ctx context.Context, sessionID, key string) (StateEntry, error) {
	req := &pb.GetStateRequest{SessionId: sessionID, Key: key}
	resp, err := call(ctx, c, "GetState", fmt.Sprintf("get state %q of", key), sessionID, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.GetStateResponse, error) {
		return sc.GetState(ctx, req)
	})
	if err != nil {
		return StateEntry{}, err
	}
	return stateFromPB(resp.GetEntry()), nil
}

// PutState writes one key and returns it at its new version.
// expectedVersion: nil = unconditional; pointer to 0 = only if absent;
// pointer to n = only if at version n (else ErrVersionConflict). A new key
// beyond the store's per-session limit is ErrLimitExceeded.
func (c *Client) PutState(ctx context.Context, sessionID, key string, value []byte, expectedVersion *uint64) (StateEntry, error) {
	req := &pb.PutStateRequest{SessionId: sessionID, Key: key, Value: value, RequestId: newRequestID()}
	if expectedVersion != nil {
		v := *expectedVersion
		req.ExpectedVersion = &v
	}
	resp, err := call(ctx, c, "PutState", fmt.Sprintf("put state %q of", key), sessionID, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.PutStateResponse, error) {
		return sc.PutState(ctx, req)
	})
	if err != nil {
		return StateEntry{}, err
	}
	return stateFromPB(resp.GetEntry()), nil
}

// DeleteState removes one key; deleting an absent key succeeds.
func (c *Client) DeleteState(ctx context.Context, sessionID, key string) error {
	req := &pb.DeleteStateRequest{SessionId: sessionID, Key: key, RequestId: newRequestID()}
	return c.do(ctx, "DeleteState", fmt.Sprintf("delete state %q of", key), sessionID, func(ctx context.Context, sc pb.SessionStoreServiceClient) error {
		_, err := sc.DeleteState(ctx, req)
		return err
	})
}

// ListState returns the entries whose key starts with prefix, in key order.
func (c *Client) ListState(ctx context.Context, sessionID, prefix string) ([]StateEntry, error) {
	req := &pb.ListStateRequest{SessionId: sessionID, Prefix: prefix}
	resp, err := call(ctx, c, "ListState", fmt.Sprintf("list state %q of", prefix), sessionID, 0, func(ctx context.Context, sc pb.SessionStoreServiceClient) (*pb.ListStateResponse, error) {
		return sc.ListState(ctx, req)
	})
	if err != nil {
		return nil, err
	}
	out := make([]StateEntry, len(resp.GetEntries()))
	for i, e := range resp.GetEntries() {
		out[i] = stateFromPB(e)
	}
	return out, nil
}
