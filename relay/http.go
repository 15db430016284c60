package relay

import (
	"encoding/json"
	"fmt"
	"html/template"
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/databus-go/databus/internal/httpapi"
	"github.com/databus-go/databus/schema"
)

// Stable error codes of the HTTP API (docs/PROTOCOL.md).
const (
	codeBadCheckpoint    = "bad_checkpoint"
	codeBadParameter     = "bad_parameter"
	codeBadPartition     = "bad_partition"
	codeUnknownSource    = "unknown_source"
	codeSCNNotHeld       = "scn_not_held"
	codeNotFound         = "not_found"
	codeMethodNotAllowed = "method_not_allowed"
	codeUnauthorized     = "unauthorized"
	codeUnavailable      = "unavailable"
)

// apiError is the body of every error response:
// {"error":{"code":...,"message":...,...}}.
type apiError struct {
	status       int
	Code         string  `json:"code"`
	Parameter    string  `json:"parameter,omitempty"`
	Source       string  `json:"source,omitempty"`
	Message      string  `json:"message"`
	OldestSCN    *uint64 `json:"oldestScn,omitempty"`
	LowWatermark *uint64 `json:"lowWatermark,omitempty"`
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func badParameter(name, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: codeBadParameter, Parameter: name, Message: fmt.Sprintf(format, args...)}
}

func (r *Relay) writeError(w http.ResponseWriter, e *apiError) {
	r.m.httpErrors.WithLabelValues(e.Code).Inc()
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, e.status, struct {
		Error *apiError `json:"error"`
	}{e})
}

func (r *Relay) routes() http.Handler {
	mux := http.NewServeMux()
	v1 := func(pattern string, h http.HandlerFunc) { mux.Handle(pattern, r.auth(r.getOnly(h))) }
	v1("/v1/sources", r.handleSources)
	v1("/v1/schemas", r.handleSchemas)
	v1("/v1/schemas/{source}", r.handleSchemas)
	v1("/v1/stream", r.handleStream)
	v1("/v1/buffer", r.handleBuffer)
	mux.Handle("/v1/", r.auth(http.HandlerFunc(r.notFound)))
	mux.Handle("/healthz", r.getOnly(http.HandlerFunc(r.handleHealth)))
	mux.Handle("/metrics", r.getOnly(promhttp.HandlerFor(r.gatherer, promhttp.HandlerOpts{})))
	mux.Handle("/{$}", r.getOnly(http.HandlerFunc(r.handleStatus)))
	mux.Handle("/", http.HandlerFunc(r.notFound))
	return mux
}

func (r *Relay) notFound(w http.ResponseWriter, req *http.Request) {
	r.writeError(w, &apiError{status: http.StatusNotFound, Code: codeNotFound, Message: fmt.Sprintf("no such path %q", req.URL.Path)})
}

// getOnly answers 405 to anything but GET and HEAD.
func (r *Relay) getOnly(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if req.Method != http.MethodGet && req.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			r.writeError(w, &apiError{status: http.StatusMethodNotAllowed, Code: codeMethodNotAllowed,
				Message: fmt.Sprintf("method %s is not allowed: the API is read-only, use GET", req.Method)})
			return
		}
		h.ServeHTTP(w, req)
	})
}

// auth enforces the bearer token when one is configured.
func (r *Relay) auth(h http.Handler) http.Handler {
	if r.cfg.AuthToken == "" {
		return h
	}
	want := []byte(r.cfg.AuthToken)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !httpapi.Bearer(req, want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="databus"`)
			r.writeError(w, &apiError{status: http.StatusUnauthorized, Code: codeUnauthorized,
				Message: "this relay needs the header Authorization: Bearer <token>, with the relay's token"})
			return
		}
		h.ServeHTTP(w, req)
	})
}

type sourceJSON struct {
	ID            uint32   `json:"id"`
	Name          string   `json:"name"`
	SchemaVersion uint16   `json:"schemaVersion"`
	Key           []string `json:"key"`
}

func (r *Relay) handleSources(w http.ResponseWriter, req *http.Request) {
	out := []sourceJSON{}
	for _, e := range r.reg.Latests() {
		out = append(out, sourceJSON{ID: e.ID, Name: e.Name, SchemaVersion: e.Version, Key: e.Key})
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

type schemaJSON struct {
	schema.Table
	Avro json.RawMessage `json:"avro"`
}

// handleSchemas serves every version of every source, or of the one named
// (or numbered) in the path.
func (r *Relay) handleSchemas(w http.ResponseWriter, req *http.Request) {
	var ids []uint32
	if name := req.PathValue("source"); name != "" {
		id, ok := r.reg.Lookup(name)
		if !ok {
			n, err := strconv.ParseUint(name, 10, 32)
			if _, known := r.reg.Latest(uint32(n)); err != nil || !known {
				r.writeError(w, &apiError{status: http.StatusNotFound, Code: codeUnknownSource, Source: name,
					Message: fmt.Sprintf("source %q is not captured by this relay (see /v1/sources)", name)})
				return
			}
			id = uint32(n)
		}
		ids = []uint32{id}
	} else {
		for _, e := range r.reg.Latests() {
			ids = append(ids, e.ID)
		}
	}
	out := []schemaJSON{}
	for _, id := range ids {
		for _, e := range r.reg.Versions(id) {
			out = append(out, schemaJSON{Table: e.Table, Avro: e.AvroSchema()})
		}
	}
	httpapi.WriteJSON(w, http.StatusOK, out)
}

type bufferJSON struct {
	MinSCN       uint64 `json:"minScn"`
	MaxSCN       uint64 `json:"maxScn"`
	LowWatermark uint64 `json:"lowWatermark"`
	Windows      int    `json:"windows"`
	Events       int64  `json:"events"`
	Bytes        int64  `json:"bytes"`
	MaxBytes     int64  `json:"maxBytes"`
	Spilled      int    `json:"spilledWindows"`
	SpillBytes   int64  `json:"spillBytes"`
	MaxSpill     int64  `json:"maxSpillBytes"`
	OldestTS     string `json:"oldestTs,omitempty"`
	NewestTS     string `json:"newestTs,omitempty"`
}

func formatTS(ns int64) string { return time.Unix(0, ns).UTC().Format(time.RFC3339Nano) }

func (r *Relay) bufferInfo() bufferJSON {
	in := r.buf.Info()
	b := bufferJSON{MinSCN: in.MinSCN, MaxSCN: in.MaxSCN, LowWatermark: in.LowWatermark, Windows: in.Windows,
		Events: in.Events, Bytes: in.Bytes, MaxBytes: in.MaxBytes, Spilled: in.SpilledWindows, SpillBytes: in.SpillBytes, MaxSpill: in.MaxSpillBytes}
	if in.Windows > 0 {
		b.OldestTS, b.NewestTS = formatTS(in.OldestTimestamp), formatTS(in.NewestTimestamp)
	}
	return b
}

func (r *Relay) handleBuffer(w http.ResponseWriter, req *http.Request) {
	httpapi.WriteJSON(w, http.StatusOK, r.bufferInfo())
}

func (r *Relay) handleHealth(w http.ResponseWriter, req *http.Request) {
	h, ok := r.health()
	status := http.StatusOK
	if !ok {
		status = http.StatusServiceUnavailable
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, status, h)
}

var statusPage = template.Must(template.New("status").Funcs(template.FuncMap{
	"ago": func(t time.Time) string { return time.Since(t).Round(time.Second).String() },
}).Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>databus relay</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}</style>
</head><body>
<h1>databus relay</h1>
<p>Capture: <b>{{.Health.Status}}</b>{{with .Health.Error}} — {{.}}{{end}}</p>
<h2>Buffer</h2>
<table>
<tr><th>min SCN</th><td>{{.Buffer.MinSCN}}</td></tr>
<tr><th>max SCN</th><td>{{.Buffer.MaxSCN}}</td></tr>
<tr><th>low watermark</th><td>{{.Buffer.LowWatermark}}</td></tr>
<tr><th>windows</th><td>{{.Buffer.Windows}}</td></tr>
<tr><th>events</th><td>{{.Buffer.Events}}</td></tr>
<tr><th>bytes</th><td>{{.Buffer.Bytes}} of {{.Buffer.MaxBytes}}</td></tr>
<tr><th>spilled</th><td>{{.Buffer.Spilled}} windows, {{.Buffer.SpillBytes}} of {{.Buffer.MaxSpill}} bytes</td></tr>
<tr><th>oldest</th><td>{{.Buffer.OldestTS}}</td></tr>
<tr><th>newest</th><td>{{.Buffer.NewestTS}}</td></tr>
</table>
<h2>Sources</h2>
<table><tr><th>id</th><th>name</th><th>schema version</th><th>key</th></tr>
{{range .Sources}}<tr><td>{{.ID}}</td><td>{{.Name}}</td><td>{{.SchemaVersion}}</td><td>{{range $i, $k := .Key}}{{if $i}}, {{end}}{{$k}}{{end}}</td></tr>
{{end}}</table>
<h2>Clients</h2>
<table><tr><th>client</th><th>remote</th><th>checkpoint SCN</th><th>lag (SCN)</th><th>lag (s)</th><th>in flight</th><th>last request</th></tr>
{{range .Clients}}<tr><td>{{.ID}}</td><td>{{.Remote}}</td><td>{{.Checkpoint}}</td><td>{{.LagSCN}}</td><td>{{printf "%.3f" .LagSeconds}}</td><td>{{.InFlight}}</td><td>{{ago .LastSeen}} ago</td></tr>
{{end}}</table>
<p><a href="/metrics">metrics</a> · <a href="/healthz">health</a></p>
</body></html>
`))

func (r *Relay) handleStatus(w http.ResponseWriter, req *http.Request) {
	h, _ := r.health()
	data := struct {
		Health  health
		Buffer  bufferJSON
		Sources []sourceJSON
		Clients []clientInfo
	}{Health: h, Buffer: r.bufferInfo(), Clients: r.clients.snapshot()}
	for _, e := range r.reg.Latests() {
		data.Sources = append(data.Sources, sourceJSON{ID: e.ID, Name: e.Name, SchemaVersion: e.Version, Key: e.Key})
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusPage.Execute(w, data); err != nil {
		r.log.Debug("status page", "err", err)
	}
}
