package worker

import (
	"bufio"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"strings"
)

// Authentication on /mcp (off unless configured). Two sources, either or
// both:
//
//   - bearer tokens (--auth-tokens FILE): the client sends
//     "Authorization: Bearer <token>"; the file maps sha256(token), in hex,
//     to a principal name, so the file holds no usable secret;
//   - a trusted header (--auth-principal-header NAME) that a gateway in
//     front of the workers sets after it authenticated the client. The
//     worker believes it, so only a gateway that strips the header from
//     client requests may reach the workers.
//
// A request with an Authorization header must carry a valid token even
// when a trusted header is configured: a bad token is never ignored.
//
// A session is bound to the principal that sent its initialize: the
// principal is kept in the session record in the store, and every worker
// compares it with the request's principal on every load of the session,
// so a session is bound wherever it is served. Another principal gets 404,
// the same answer as for a session that does not exist, so a session id
// cannot be probed. With auth off the principal is "", so a worker without
// auth cannot serve a session created with auth either.

// authRealm is the realm of WWW-Authenticate challenges.
const authRealm = "erlmcp"

// authenticator finds the principal of a request.
type authenticator struct {
	// tokens maps sha256(token) to its principal; nil without a file.
	tokens map[[sha256.Size]byte]string
	// header is the trusted principal header; "" when not used.
	header string
}

// errAuthMissing and errAuthInvalid are the two ways a request fails
// authentication; they pick the WWW-Authenticate challenge.
var (
	errAuthMissing = errors.New("authentication required")
	errAuthInvalid = errors.New("invalid bearer token")
)

// newAuthenticator builds the authenticator cfg asks for; nil when auth
// is off.
func newAuthenticator(cfg Config) (*authenticator, error) {
	if cfg.AuthTokensFile == "" && cfg.AuthPrincipalHeader == "" {
		return nil, nil
	}
	a := &authenticator{header: http.CanonicalHeaderKey(strings.TrimSpace(cfg.AuthPrincipalHeader))}
	if cfg.AuthTokensFile != "" {
		tokens, err := LoadAuthTokens(cfg.AuthTokensFile)
		if err != nil {
			return nil, err
		}
		a.tokens = tokens
	}
	return a, nil
}

// LoadAuthTokens reads an auth tokens file: one "<sha256 hex> <principal>"
// per line (the hash may be written "sha256:<hex>"); blank lines and lines
// starting with # are skipped. The hash of a token is what
// `printf %s "$TOKEN" | sha256sum` prints.
func LoadAuthTokens(path string) (map[[sha256.Size]byte]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--auth-tokens: %w", err)
	}
	defer f.Close()
	tokens := map[[sha256.Size]byte]string{}
	sc := bufio.NewScanner(f)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		hash, principal, _ := strings.Cut(line, " ")
		principal = strings.TrimSpace(principal)
		raw, err := hex.DecodeString(strings.TrimPrefix(strings.ToLower(hash), "sha256:"))
		if err != nil || len(raw) != sha256.Size {
			return nil, fmt.Errorf("--auth-tokens %s line %d: want \"<sha256 of the token, 64 hex digits> <principal>\"", path, n)
		}
		if !validPrincipal(principal) {
			return nil, fmt.Errorf("--auth-tokens %s line %d: the principal must be 1 to 256 visible ASCII characters", path, n)
		}
		var key [sha256.Size]byte
		copy(key[:], raw)
		if prev, dup := tokens[key]; dup && prev != principal {
			return nil, fmt.Errorf("--auth-tokens %s line %d: the same token hash is listed for %q and %q", path, n, prev, principal)
		}
		tokens[key] = principal
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("--auth-tokens %s: %w", path, err)
	}
	if len(tokens) == 0 {
		return nil, fmt.Errorf("--auth-tokens %s: no tokens listed (every request would be refused)", path)
	}
	return tokens, nil
}

// validPrincipal: 1..256 visible ASCII characters (it is compared and
// logged, never parsed).
func validPrincipal(p string) bool { return validSessionID(p) }

// principal returns the authenticated principal of r, or errAuthMissing
// or errAuthInvalid.
func (a *authenticator) principal(r *http.Request) (string, error) {
	if authz := r.Header.Get("Authorization"); authz != "" {
		scheme, token, ok := strings.Cut(authz, " ")
		token = strings.TrimSpace(token)
		if !ok || !strings.EqualFold(scheme, "Bearer") || token == "" || a.tokens == nil {
			return "", errAuthInvalid
		}
		// A map lookup by hash: the timing reveals at most something
		// about a hash, never about a token.
		p, found := a.tokens[sha256.Sum256([]byte(token))]
		if !found {
			return "", errAuthInvalid
		}
		return p, nil
	}
	if a.header != "" {
		if p := strings.TrimSpace(r.Header.Get(a.header)); p != "" {
			if !validPrincipal(p) {
				return "", errAuthInvalid
			}
			return p, nil
		}
	}
	return "", errAuthMissing
}

// unauthorized answers 401 with a Bearer challenge (RFC 6750).
func (h *Handler) unauthorized(w http.ResponseWriter, err error) {
	challenge := fmt.Sprintf("Bearer realm=%q", authRealm)
	msg := "Unauthorized: send Authorization: Bearer <token>"
	if errors.Is(err, errAuthInvalid) {
		challenge += `, error="invalid_token", error_description="the token is not valid"`
		msg = "Unauthorized: the credentials are not valid"
	}
	w.Header().Set("WWW-Authenticate", challenge)
	h.fail(w, http.StatusUnauthorized, nil, errorf(CodeTransport, "%s", msg))
}

// principalKey is the context key of the request's principal.
type principalKey struct{}

func withPrincipal(ctx context.Context, p string) context.Context {
	return context.WithValue(ctx, principalKey{}, p)
}

// principalOf is the principal of the request ctx belongs to; "" when
// auth is off.
func principalOf(ctx context.Context) string {
	p, _ := ctx.Value(principalKey{}).(string)
	return p
}

// errWrongPrincipal: the session belongs to another principal. It is a
// session-not-found to every caller, so it answers 404 like one.
var errWrongPrincipal = fmt.Errorf("%w: the session is bound to another principal", ErrSessionNotFound)
