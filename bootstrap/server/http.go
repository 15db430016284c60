package server

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/databus-go/databus/internal/httpapi"
	"github.com/databus-go/databus/schema"
)

// Stable error codes of the HTTP API (docs/BOOTSTRAP.md). The codes shared
// with the relay mean the same thing there.
const (
	codeBadCheckpoint     = "bad_checkpoint"
	codeBadParameter      = "bad_parameter"
	codeBadPartition      = "bad_partition"
	codeUnknownSource     = "unknown_source"
	codeForeignCheckpoint = "foreign_checkpoint"
	codeSCNNotHeld        = "scn_not_held"
	codeSeedRunning       = "seed_running"
	codeSeedingNotEnabled = "seeding_not_configured"
	codeNotFound          = "not_found"
	codeMethodNotAllowed  = "method_not_allowed"
	codeUnauthorized      = "unauthorized"
	codeUnavailable       = "unavailable"
)

// The methods an endpoint takes, as its 405's Allow header says them.
const allowGET, allowPOST = "GET, HEAD", "POST"

// statusPageStoreTimeout bounds the store calls of the status page, which
// people load by hand and should never hang.
const statusPageStoreTimeout = 2 * time.Second

// apiError is the body of every error response:
// {"error":{"code":...,"message":...,...}}, the relay's shape plus the
// fields a bootstrap client acts on.
type apiError struct {
	status       int
	Code         string  `json:"code"`
	Parameter    string  `json:"parameter,omitempty"`
	Source       string  `json:"source,omitempty"`
	Message      string  `json:"message"`
	LowWatermark *uint64 `json:"lowWatermark,omitempty"`
	HeadSCN      *uint64 `json:"headScn,omitempty"`
	Store        string  `json:"store,omitempty"`
	// gone: the client went away before the answer; nothing is written.
	gone bool
}

func (e *apiError) Error() string { return e.Code + ": " + e.Message }

func badParameter(name, format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: codeBadParameter, Parameter: name, Message: fmt.Sprintf(format, args...)}
}

func badCheckpoint(format string, args ...any) *apiError {
	return &apiError{status: http.StatusBadRequest, Code: codeBadCheckpoint, Parameter: "checkpoint", Message: fmt.Sprintf(format, args...)}
}

// storeError turns a failed store call into the response: 503 unavailable,
// logged, or nothing when the request's context ended (the client went
// away, or the server is shutting down).
func (s *Server) storeError(ctx context.Context, what string, err error) *apiError {
	if ctx.Err() != nil {
		return &apiError{gone: true, Code: codeUnavailable, Message: ctx.Err().Error()}
	}
	s.log.Error("bootstrap store call failed", "call", what, "err", err)
	return &apiError{status: http.StatusServiceUnavailable, Code: codeUnavailable,
		Message: fmt.Sprintf("the bootstrap store failed (%s): %v; retry", what, err)}
}

// writeError answers e, unless the client has gone.
func (s *Server) writeError(w http.ResponseWriter, e *apiError) {
	if e.gone {
		return
	}
	s.m.errors.WithLabelValues(e.Code).Inc()
	h := w.Header()
	h.Del("Content-Length")
	h.Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, e.status, struct {
		Error *apiError `json:"error"`
	}{e})
}

func (s *Server) routes(gatherer prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	handle := func(pattern, endpoint string, h http.Handler) {
		mux.Handle(pattern, s.m.instrument(endpoint, h))
	}
	get := func(pattern, endpoint string, h http.HandlerFunc) {
		handle(pattern, endpoint, s.auth(methods(s, allowGET, h)))
	}
	get("/v1/info", "info", s.handleInfo)
	get("/v1/schemas", "schemas", s.handleSchemas)
	get("/v1/schemas/{source}", "schemas", s.handleSchemas)
	get("/v1/snapshot", "snapshot", s.handleSnapshot)
	get("/v1/catchup", "catchup", s.handleCatchup)
	handle("/v1/seed", "seed", s.auth(methods(s, allowPOST, s.handleSeed)))
	handle("/healthz", "healthz", methods(s, allowGET, s.handleHealth))
	handle("/metrics", "metrics", s.auth(methods(s, allowGET, promhttp.HandlerFor(gatherer, promhttp.HandlerOpts{}).ServeHTTP)))
	get("/{$}", "status", s.handleStatus)
	handle("/", "other", s.auth(http.HandlerFunc(s.notFound)))
	return mux
}

func (s *Server) notFound(w http.ResponseWriter, req *http.Request) {
	s.writeError(w, &apiError{status: http.StatusNotFound, Code: codeNotFound, Message: fmt.Sprintf("no such path %q", req.URL.Path)})
}

// methods answers 405 to any method not in allow ("GET, HEAD" or "POST").
func methods(s *Server, allow string, h http.HandlerFunc) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		ok := req.Method == http.MethodPost
		if allow == allowGET {
			ok = req.Method == http.MethodGet || req.Method == http.MethodHead
		}
		if !ok {
			w.Header().Set("Allow", allow)
			why := "this endpoint is read-only, use GET"
			if allow == allowPOST {
				why = "this endpoint starts an action, use POST"
			}
			s.writeError(w, &apiError{status: http.StatusMethodNotAllowed, Code: codeMethodNotAllowed,
				Message: fmt.Sprintf("method %s is not allowed on %s: %s", req.Method, req.URL.Path, why)})
			return
		}
		h(w, req)
	})
}

// auth enforces the bearer token when one is configured.
func (s *Server) auth(h http.Handler) http.Handler {
	if s.cfg.AuthToken == "" {
		return h
	}
	want := []byte(s.cfg.AuthToken)
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if !httpapi.Bearer(req, want) {
			w.Header().Set("WWW-Authenticate", `Bearer realm="databus"`)
			s.writeError(w, &apiError{status: http.StatusUnauthorized, Code: codeUnauthorized,
				Message: "this bootstrap server needs the header Authorization: Bearer <token>, with the server's token"})
			return
		}
		h.ServeHTTP(w, req)
	})
}

// parseParams validates a query string against the parameters an endpoint
// accepts: malformed, unknown and repeated parameters are 400s naming them.
func parseParams(raw string, allowed []string) (map[string]string, *apiError) {
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return nil, badParameter("query", "the query string is malformed: %v", err)
	}
	names := make([]string, 0, len(vals))
	for name := range vals {
		names = append(names, name)
	}
	slices.Sort(names)
	out := make(map[string]string, len(vals))
	for _, name := range names {
		if name == "" {
			return nil, badParameter("query", "the query string has a parameter with no name")
		}
		if !slices.Contains(allowed, name) {
			if len(allowed) == 0 {
				return nil, badParameter(name, "unknown parameter %q; this endpoint takes none", name)
			}
			return nil, badParameter(name, "unknown parameter %q; the parameters are %s", name, strings.Join(allowed, ", "))
		}
		if n := len(vals[name]); n > 1 {
			return nil, badParameter(name, "parameter %q is given %d times", name, n)
		}
		out[name] = vals[name][0]
	}
	return out, nil
}

// catalog indexes the store's schema versions by name and id.
type catalog struct {
	tables []schema.Table          // by id, then version, as the store returns them
	byName map[string][]uint32     // every id that any version was named by, ascending
	latest map[uint32]schema.Table // newest version of each id
	ids    []uint32                // ascending
}

func newCatalog(tables []schema.Table) *catalog {
	c := &catalog{tables: tables, byName: map[string][]uint32{}, latest: map[uint32]schema.Table{}}
	for _, t := range tables {
		if ids := c.byName[t.Name]; !slices.Contains(ids, t.ID) {
			c.byName[t.Name] = append(ids, t.ID)
		}
		if old, ok := c.latest[t.ID]; !ok || t.Version >= old.Version {
			c.latest[t.ID] = t
		}
	}
	for id := range c.latest {
		c.ids = append(c.ids, id)
	}
	slices.Sort(c.ids)
	for _, ids := range c.byName {
		slices.Sort(ids)
	}
	return c
}

func (s *Server) catalog(ctx context.Context) (*catalog, *apiError) {
	tables, err := s.st.Schemas(ctx)
	if err != nil {
		return nil, s.storeError(ctx, "Schemas", err)
	}
	return newCatalog(tables), nil
}

type sourceJSON struct {
	ID            uint32   `json:"id"`
	Name          string   `json:"name"`
	SchemaVersion uint16   `json:"schemaVersion"`
	Key           []string `json:"key"`
}

func (c *catalog) sources() []sourceJSON {
	out := []sourceJSON{}
	for _, id := range c.ids {
		t := c.latest[id]
		out = append(out, sourceJSON{ID: id, Name: t.Name, SchemaVersion: t.Version, Key: t.Key})
	}
	return out
}

type seedJSON struct {
	Table         string  `json:"table"`
	Run           string  `json:"run"`
	Rows          uint64  `json:"rows"`
	Done          bool    `json:"done"`
	Running       bool    `json:"running,omitempty"`
	Queued        bool    `json:"queued,omitempty"`
	Estimate      uint64  `json:"estimate,omitempty"`
	RowsPerSecond float64 `json:"rowsPerSecond,omitempty"`
	ETASeconds    float64 `json:"etaSeconds,omitempty"`
	Started       string  `json:"started,omitempty"`
	Updated       string  `json:"updated,omitempty"`
	Error         string  `json:"error,omitempty"`
}

// seeds merges the durable seed records with the seeder's live figures: a
// live run replaces the record of an older run of its table (the new run's
// first chunk will), and adds the figures only a running seeder knows.
func (s *Server) seeds(ctx context.Context) ([]seedJSON, *apiError) {
	recs, err := s.st.Seeds(ctx)
	if err != nil {
		return nil, s.storeError(ctx, "Seeds", err)
	}
	byTable := map[string]*seedJSON{}
	out := make([]*seedJSON, 0, len(recs))
	for _, r := range recs {
		j := &seedJSON{Table: r.Table, Run: r.Run, Rows: r.Rows, Done: r.Done, Started: formatTime(r.Started), Updated: formatTime(r.Updated)}
		byTable[r.Table] = j
		out = append(out, j)
	}
	if s.seeder != nil {
		for _, l := range s.seeder.SeedStatus() {
			j, ok := byTable[l.Table]
			if !ok {
				j = &seedJSON{Table: l.Table}
				byTable[l.Table] = j
				out = append(out, j)
			}
			if j.Run != l.Run {
				*j = seedJSON{Table: l.Table, Run: l.Run}
			}
			j.Rows = max(j.Rows, l.Rows)
			j.Done = j.Done || l.Done
			j.Running, j.Queued, j.Error = l.Running, l.Queued, l.Error
			j.Estimate, j.RowsPerSecond, j.ETASeconds = l.Estimate, l.RowsPerSecond, l.ETA.Seconds()
			if !l.Started.IsZero() {
				j.Started = formatTime(l.Started)
			}
			if !l.Updated.IsZero() {
				j.Updated = formatTime(l.Updated)
			}
		}
	}
	slices.SortFunc(out, func(a, b *seedJSON) int { return cmp.Compare(a.Table, b.Table) })
	res := make([]seedJSON, len(out))
	for i, j := range out {
		res[i] = *j
	}
	return res, nil
}

func formatTime(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

type infoJSON struct {
	Store        string       `json:"store"`
	HeadSCN      uint64       `json:"headScn"`
	HeadTime     string       `json:"headTime,omitempty"`
	LowWatermark uint64       `json:"lowWatermark"`
	Windows      uint64       `json:"windows"`
	Empty        bool         `json:"empty"`
	Rows         uint64       `json:"rows"`
	Sources      []sourceJSON `json:"sources"`
	Seeds        []seedJSON   `json:"seeds"`
}

var infoParams = []string{"sources", "partition"}

// handleInfo serves GET /v1/info. The row count is taken at the head the
// same State call returned, so it is exactly the size of a snapshot at
// headScn with the same filter.
func (s *Server) handleInfo(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	vals, aerr := parseParams(req.URL.RawQuery, infoParams)
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	cat, aerr := s.catalog(ctx)
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	f, aerr := parseFilter(vals, cat)
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	st, err := s.st.State(ctx)
	if err != nil {
		s.writeError(w, s.storeError(ctx, "State", err))
		return
	}
	rows, err := s.st.CountRows(ctx, st.Head, f)
	if err != nil {
		s.writeError(w, s.storeError(ctx, "CountRows", err))
		return
	}
	seeds, aerr := s.seeds(ctx)
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	info := infoJSON{Store: st.ID, HeadSCN: st.Head, LowWatermark: st.LowWatermark, Windows: st.Windows, Empty: st.Empty,
		Rows: rows, Sources: cat.sources(), Seeds: seeds}
	if st.HeadTime != 0 {
		info.HeadTime = formatTime(time.Unix(0, st.HeadTime))
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, info)
}

type schemaJSON struct {
	schema.Table
	Avro json.RawMessage `json:"avro"`
}

// handleSchemas serves every version of every source, or of the one named
// (or numbered) in the path, in the relay's /v1/schemas format.
func (s *Server) handleSchemas(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	if _, aerr := parseParams(req.URL.RawQuery, nil); aerr != nil {
		s.writeError(w, aerr)
		return
	}
	cat, aerr := s.catalog(ctx)
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	var ids []uint32
	if name := req.PathValue("source"); name != "" {
		ids = cat.byName[name]
		if len(ids) == 0 {
			n, err := strconv.ParseUint(name, 10, 32)
			if _, known := cat.latest[uint32(n)]; err != nil || !known {
				s.writeError(w, &apiError{status: http.StatusNotFound, Code: codeUnknownSource, Source: name,
					Message: fmt.Sprintf("source %q is not in this bootstrap store (see /v1/info)", name)})
				return
			}
			ids = []uint32{uint32(n)}
		}
	}
	out := []schemaJSON{}
	for _, t := range cat.tables {
		if ids == nil || slices.Contains(ids, t.ID) {
			out = append(out, schemaJSON{Table: t, Avro: t.AvroSchema()})
		}
	}
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusOK, out)
}

type healthJSON struct {
	Status  string `json:"status"` // ok or error
	Store   string `json:"store,omitempty"`
	HeadSCN uint64 `json:"headScn"`
	Error   string `json:"error,omitempty"`
}

// handleHealth answers 200 when the store answers, 503 otherwise.
func (s *Server) handleHealth(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), storeTimeout)
	defer cancel()
	w.Header().Set("Cache-Control", "no-store")
	st, err := s.st.State(ctx)
	if err != nil {
		httpapi.WriteJSON(w, http.StatusServiceUnavailable, healthJSON{Status: "error", Error: err.Error()})
		return
	}
	httpapi.WriteJSON(w, http.StatusOK, healthJSON{Status: "ok", Store: st.ID, HeadSCN: st.Head})
}

type seedStartedJSON struct {
	Table string `json:"table"`
	Run   string `json:"run"`
}

// handleSeed serves POST /v1/seed?table=db.table: it starts a seed run and
// answers 202 with its id, without waiting for it.
func (s *Server) handleSeed(w http.ResponseWriter, req *http.Request) {
	vals, aerr := parseParams(req.URL.RawQuery, []string{"table"})
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	table, ok := vals["table"]
	if !ok || table == "" {
		s.writeError(w, badParameter("table", `parameter "table" is required: the table to seed, as db.table`))
		return
	}
	if s.seeder == nil {
		s.writeError(w, &apiError{status: http.StatusNotImplemented, Code: codeSeedingNotEnabled,
			Message: "this bootstrap server has no seeder: run the seed where the bootstrap producer runs (databus bootstrap seed)"})
		return
	}
	run, err := s.seeder.Seed(req.Context(), table)
	switch {
	case errors.Is(err, ErrUnknownTable):
		s.writeError(w, &apiError{status: http.StatusBadRequest, Code: codeUnknownSource, Parameter: "table", Source: table, Message: err.Error()})
		return
	case errors.Is(err, ErrSeedingUnavailable):
		s.writeError(w, &apiError{status: http.StatusNotImplemented, Code: codeSeedingNotEnabled, Source: table, Message: err.Error()})
		return
	case errors.Is(err, ErrSeedRunning):
		s.writeError(w, &apiError{status: http.StatusConflict, Code: codeSeedRunning, Parameter: "table", Source: table, Message: err.Error()})
		return
	case err != nil && req.Context().Err() != nil:
		return // the client went away
	case err != nil:
		s.log.Error("starting a seed", "table", table, "err", err)
		s.writeError(w, &apiError{status: http.StatusServiceUnavailable, Code: codeUnavailable, Source: table,
			Message: fmt.Sprintf("starting the seed of %s failed: %v", table, err)})
		return
	}
	s.log.Info("seed started", "table", table, "run", run)
	w.Header().Set("Cache-Control", "no-store")
	httpapi.WriteJSON(w, http.StatusAccepted, seedStartedJSON{Table: table, Run: run})
}

var statusPage = template.Must(template.New("status").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>databus bootstrap</title>
<style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.2em .6em;text-align:left}</style>
</head><body>
<h1>databus bootstrap server</h1>
{{with .Error}}<p>Store: <b>error</b> — {{.}}</p>{{else}}
<h2>Store</h2>
<table>
<tr><th>id</th><td>{{.Info.Store}}</td></tr>
<tr><th>head SCN</th><td>{{.Info.HeadSCN}}</td></tr>
<tr><th>head time</th><td>{{.Info.HeadTime}}</td></tr>
<tr><th>low watermark</th><td>{{.Info.LowWatermark}}</td></tr>
<tr><th>log windows</th><td>{{.Info.Windows}}</td></tr>
</table>
<h2>Sources</h2>
<table><tr><th>id</th><th>name</th><th>schema version</th><th>key</th></tr>
{{range .Info.Sources}}<tr><td>{{.ID}}</td><td>{{.Name}}</td><td>{{.SchemaVersion}}</td><td>{{range $i, $k := .Key}}{{if $i}}, {{end}}{{$k}}{{end}}</td></tr>
{{end}}</table>
<h2>Seeds</h2>
<table><tr><th>table</th><th>run</th><th>state</th><th>rows</th><th>estimate</th><th>rows/s</th><th>ETA (s)</th><th>updated</th><th>error</th></tr>
{{range .Info.Seeds}}<tr><td>{{.Table}}</td><td>{{.Run}}</td><td>{{if .Done}}done{{else if .Running}}running{{else if .Queued}}queued{{else}}stopped{{end}}</td><td>{{.Rows}}</td><td>{{.Estimate}}</td><td>{{printf "%.0f" .RowsPerSecond}}</td><td>{{printf "%.0f" .ETASeconds}}</td><td>{{.Updated}}</td><td>{{.Error}}</td></tr>
{{end}}</table>
{{end}}
<p><a href="/v1/info">info</a> · <a href="/metrics">metrics</a> · <a href="/healthz">health</a></p>
</body></html>
`))

// handleStatus serves the status page for people. It does not count rows:
// that may scan the whole snapshot.
func (s *Server) handleStatus(w http.ResponseWriter, req *http.Request) {
	ctx, cancel := context.WithTimeout(req.Context(), statusPageStoreTimeout)
	defer cancel()
	var data struct {
		Info  infoJSON
		Error string
	}
	fail := func(what string, err error) { data.Error = fmt.Sprintf("%s: %v", what, err) }
	if st, err := s.st.State(ctx); err != nil {
		fail("State", err)
	} else {
		data.Info = infoJSON{Store: st.ID, HeadSCN: st.Head, LowWatermark: st.LowWatermark, Windows: st.Windows}
		if st.HeadTime != 0 {
			data.Info.HeadTime = formatTime(time.Unix(0, st.HeadTime))
		}
		if cat, aerr := s.catalog(ctx); aerr != nil {
			fail("Schemas", aerr)
		} else {
			data.Info.Sources = cat.sources()
		}
		if seeds, aerr := s.seeds(ctx); aerr != nil {
			fail("Seeds", aerr)
		} else {
			data.Info.Seeds = seeds
		}
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	if err := statusPage.Execute(w, data); err != nil {
		s.log.Debug("status page", "err", err)
	}
}
