// Package httpapi holds the small pieces the relay's and the bootstrap
// server's HTTP APIs share, so that both answer errors, authenticate and
// validate their listen address the same way.
package httpapi

import (
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"strings"
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
