package worker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"time"
)

// Session is one session record as the store returns it.
type Session struct {
	ID      string
	Version uint64
	Data    []byte
	// UpdatedAt is when the store last refreshed the idle timer (the
	// store's clock); zero when the store does not say.
	UpdatedAt time.Time
	// IdleTTL is the record's idle lifetime; 0 when it never expires or
	// the store does not say.
	IdleTTL time.Duration
}

// Errors a SessionStore returns (wrapped is fine: the worker tests them with
// errors.Is). An expired session is ErrSessionNotFound.
var (
	ErrSessionNotFound  = errors.New("session not found")
	ErrSessionExists    = errors.New("session already exists")
	ErrVersionConflict  = errors.New("session version conflict")
	ErrStoreUnavailable = errors.New("session store unavailable")
	// ErrNotFound: a state key or task is absent (the session exists).
	ErrNotFound = errors.New("not found")
)

// SessionStore is what the worker needs from the replicated session store.
// StoreFromClient adapts the store's Go client; tests use an in-memory one.
type SessionStore interface {
	// Create writes a new record; ErrSessionExists when id is taken.
	Create(ctx context.Context, id string, data []byte, idleTTL time.Duration) (Session, error)
	// Get reads a record linearizably; touch resets its idle timer.
	Get(ctx context.Context, id string, touch bool) (Session, error)
	// CompareAndSet replaces Data when the record is at expectedVersion;
	// ErrVersionConflict otherwise.
	CompareAndSet(ctx context.Context, id string, expectedVersion uint64, data []byte) (Session, error)
	// Delete removes the record; ErrSessionNotFound when there is none.
	Delete(ctx context.Context, id string) error

	// AppendEvents appends data to a session's named event stream and
	// returns the sequence numbers given to them (1, 2, ... per stream).
	AppendEvents(ctx context.Context, sessionID, stream string, data ...[]byte) ([]uint64, error)
	// ReadEvents returns up to limit events of stream after afterSeq. When
	// there are none it waits up to wait for one (long poll). A stream
	// nobody wrote to is empty, not an error.
	ReadEvents(ctx context.Context, sessionID, stream string, afterSeq uint64, limit int, wait time.Duration) (Events, error)

	// GetState reads one session-scoped key; ErrNotFound when absent.
	GetState(ctx context.Context, sessionID, key string) (StateEntry, error)
	// PutState writes a key: expectedVersion nil writes unconditionally,
	// &0 only when the key is absent, &n only when it is at version n;
	// ErrVersionConflict otherwise.
	PutState(ctx context.Context, sessionID, key string, value []byte, expectedVersion *uint64) (StateEntry, error)
	// DeleteState removes a key (absent is not an error).
	DeleteState(ctx context.Context, sessionID, key string) error
	// ListState returns the keys with prefix, in key order.
	ListState(ctx context.Context, sessionID, prefix string) ([]StateEntry, error)

	// PutTask writes a task (expectedVersion as for PutState).
	PutTask(ctx context.Context, sessionID string, t Task, expectedVersion *uint64) (Task, error)
	// GetTask reads a task; ErrNotFound when absent.
	GetTask(ctx context.Context, sessionID, taskID string) (Task, error)
	// ListTasks returns up to limit tasks after afterTaskID (in id order)
	// and the id to continue after ("" when there are no more).
	ListTasks(ctx context.Context, sessionID, afterTaskID string, limit int) ([]Task, string, error)
}

// Event is one stored message of a session's event stream.
type Event struct {
	Stream    string
	Seq       uint64
	Data      []byte
	CreatedAt time.Time
}

// Events is one read of a stream: the events and the stream's bounds
// (FirstRetainedSeq is 0 for an empty stream).
type Events struct {
	Events                    []Event
	FirstRetainedSeq, LastSeq uint64
}

// StateEntry is one session-scoped key.
type StateEntry struct {
	Key     string
	Value   []byte
	Version uint64
}

// Task is one stored task (MCP 2025-11-25 tasks).
type Task struct {
	ID, Status, StatusMessage, Owner string
	Result, Data                     []byte
	CreatedAt, UpdatedAt             time.Time
	TTL                              time.Duration
	Version                          uint64
}

// sessionRecordVersion is the layout version of sessionRecord, bumped when
// a field changes meaning (adding fields does not bump it).
const sessionRecordVersion = 1

// sessionRecord is the JSON kept as a session's Data in the store. Every
// worker rebuilds the session from it; nothing lives only in a worker.
type sessionRecord struct {
	// V is the layout version (sessionRecordVersion).
	V int `json:"v"`
	// ProtocolVersion is the negotiated MCP version.
	ProtocolVersion string `json:"protocol_version"`
	// ClientCapabilities and ClientInfo are kept as the client sent them.
	ClientCapabilities json.RawMessage `json:"client_capabilities,omitempty"`
	ClientInfo         json.RawMessage `json:"client_info,omitempty"`
	// ServerCapabilities is what this session was promised at initialize.
	ServerCapabilities json.RawMessage `json:"server_capabilities,omitempty"`
	// Initialized is set by notifications/initialized.
	Initialized bool `json:"initialized"`
	// LogLevel is the level set by logging/setLevel; "" when never set.
	LogLevel string `json:"log_level"`
	// CreatedBy is the worker that answered initialize (for diagnosis).
	CreatedBy string `json:"created_by,omitempty"`
	// Principal is the authenticated principal that initialized the
	// session ("" with auth off); only it is served the session (auth.go).
	Principal string `json:"principal,omitempty"`
}

func decodeRecord(data []byte) (sessionRecord, error) {
	var r sessionRecord
	if err := json.Unmarshal(data, &r); err != nil {
		return r, fmt.Errorf("decode session record: %w", err)
	}
	return r, nil
}

func (r sessionRecord) encode() []byte {
	b, _ := json.Marshal(r) // only marshalable fields
	return b
}

// sessionIDBytes is the entropy of a session id: 128 bits.
const sessionIDBytes = 16

// maxSessionIDLen bounds the Mcp-Session-Id header we accept. Our ids are
// 32 hex characters; other erlmcp workers sharing the store may use
// others, so allow some room.
const maxSessionIDLen = 256

// newSessionID returns 128 random bits as lower-case hex.
func newSessionID() string {
	b := make([]byte, sessionIDBytes)
	_, _ = rand.Read(b) // never fails (crypto/rand, Go ≥ 1.24)
	return hex.EncodeToString(b)
}

// validSessionID reports whether id is a possible session id: 1..256 visible
// ASCII characters (0x21-0x7E), as the spec requires.
func validSessionID(id string) bool {
	if id == "" || len(id) > maxSessionIDLen {
		return false
	}
	for i := 0; i < len(id); i++ {
		if id[i] < 0x21 || id[i] > 0x7e {
			return false
		}
	}
	return true
}
