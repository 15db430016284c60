// Package httpapi holds the small pieces the relay's and the bootstrap
// server's HTTP APIs share, so that both answer errors, authenticate and
// validate their listen address the same way.
package httpapi

import (
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// WriteJSON answers status with v as a JSON body (one line, with its
// Content-Length). A value that cannot be encoded becomes a 500 with a JSON
// error body, never a half-written response.
func WriteJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, `{"error":{"code":"internal","message":"encoding the response failed"}}`, http.StatusInternalServerError)
		return
	}
	b = append(b, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	w.Write(b)
}

// Bearer reports whether req carries "Authorization: Bearer <want>". The
// comparison takes the same time whatever the token sent.
func Bearer(req *http.Request, want []byte) bool {
	scheme, tok, _ := strings.Cut(req.Header.Get("Authorization"), " ")
	return strings.EqualFold(scheme, "Bearer") && subtle.ConstantTimeCompare([]byte(strings.TrimSpace(tok)), want) == 1
}

// CheckListen validates a listen address: host:port with a numeric port
// (0 picks a free one). The error names the address, not the field.
func CheckListen(addr string) error {
	_, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("listen %q: want host:port (%v)", addr, err)
	}
	if _, err := strconv.ParseUint(port, 10, 16); err != nil {
		return fmt.Errorf("listen %q: port %q must be a number in [0, 65535]", addr, port)
	}
	return nil
}

// Timeouts of the HTTP servers.
const (
	readHeaderTimeout = 10 * time.Second
	idleTimeout       = 2 * time.Minute
	// ShutdownTimeout is how long Serve lets in-flight requests finish
	// once its context is done.
	ShutdownTimeout = 5 * time.Second
)

// Serve serves h on ln until ctx is done or serving fails, then shuts the
// server down gracefully: in-flight requests get ShutdownTimeout, after
// which the connections are closed. stopping, if not nil, runs first, so
// that long requests (long polls) can end. Serve returns when the server
// has stopped, with the serving error, if any, other than the server
// having been closed.
func Serve(ctx context.Context, ln net.Listener, h http.Handler, log *slog.Logger, stopping func()) error {
	srv := &http.Server{
		Handler:           h,
		ReadHeaderTimeout: readHeaderTimeout,
		IdleTimeout:       idleTimeout,
		ErrorLog:          slog.NewLogLogger(log.Handler(), slog.LevelWarn),
	}
	served := make(chan error, 1)
	go func() { served <- srv.Serve(ln) }() // owned: Serve always receives from served

	var serveErr error
	select {
	case <-ctx.Done():
	case serveErr = <-served:
	}
	if stopping != nil {
		stopping()
	}
	shCtx, done := context.WithTimeout(context.WithoutCancel(ctx), ShutdownTimeout)
	if err := srv.Shutdown(shCtx); err != nil {
		log.Warn("HTTP shutdown timed out; closing connections", "err", err)
		srv.Close()
	}
	done()
	if serveErr == nil {
		serveErr = <-served
	}
	if errors.Is(serveErr, http.ErrServerClosed) {
		return nil
	}
	return serveErr
}
