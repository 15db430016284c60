package server

import (
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/databus-go/databus/bootstrap/store"
	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
)

// Content type and response headers of /v1/snapshot and /v1/catchup
// (docs/BOOTSTRAP.md).
const (
	ContentTypeFrames   = "application/x-databus-frames"
	HeaderSnapshotAfter = "X-Databus-Snapshot-After"
	HeaderSnapshotDone  = "X-Databus-Snapshot-Done"
	HeaderRows          = "X-Databus-Rows"
	HeaderMaxSCN        = "X-Databus-Max-Scn"
	HeaderLastSCN       = "X-Databus-Last-Scn"
	HeaderWindows       = "X-Databus-Windows"
	HeaderLowWatermark  = "X-Databus-Low-Watermark"
)

const (
	// writeChunk is how much of a page is written per write deadline.
	writeChunk = 1 << 20
	// maxPooledPage bounds the page buffers kept for reuse.
	maxPooledPage = 8 << 20
	// newPageSize fits a default page (1 MiB) plus the row that may
	// overflow it, so the common case never grows a buffer.
	newPageSize = 1<<20 + 64<<10
)

var (
	snapshotParams = []string{"checkpoint", "sources", "partition", "maxBytes", "maxRows", "client"}
	catchupParams  = []string{"checkpoint", "sources", "partition", "maxBytes", "client"}
)

// pages recycles the buffers the store fills with a page's frames
// (SnapshotQuery.Dst, LogQuery.Dst), so that a reader paging through a
// large snapshot costs no allocation per page. Buffers grown past
// maxPooledPage by a large maxBytes or one huge row are dropped rather than
// kept alive.
var pages = sync.Pool{New: func() any { b := make([]byte, 0, newPageSize); return &b }}

func getPage() *[]byte { return pages.Get().(*[]byte) }

func putPage(p *[]byte, grown []byte) {
	if cap(grown) > maxPooledPage {
		return
	}
	*p = grown[:0]
	pages.Put(p)
}

// parseFilter builds the filter of the sources and partition parameters,
// resolving names through the store's schemas; nil when neither is given.
func parseFilter(vals map[string]string, cat *catalog) (*filter.Filter, *apiError) {
	var f filter.Filter
	srcs, hasSources := vals["sources"]
	part, hasPartition := vals["partition"]
	if !hasSources && !hasPartition {
		return nil, nil
	}
	selected := cat.ids
	if hasSources {
		if srcs == "" {
			return nil, badParameter("sources", "sources is empty; omit it to receive every source")
		}
		f.Sources = map[uint32]struct{}{}
		selected = nil
		for _, name := range strings.Split(srcs, ",") {
			if name == "" {
				return nil, badParameter("sources", "sources %q has an empty name", srcs)
			}
			ids := cat.byName[name]
			if len(ids) == 0 {
				return nil, &apiError{status: http.StatusBadRequest, Code: codeUnknownSource, Parameter: "sources", Source: name,
					Message: fmt.Sprintf("source %q is not in this bootstrap store (see /v1/info)", name)}
			}
			for _, id := range ids {
				f.Sources[id] = struct{}{}
				selected = append(selected, id)
			}
		}
	}
	if hasPartition {
		if part == "" {
			return nil, &apiError{status: http.StatusBadRequest, Code: codeBadPartition, Parameter: "partition",
				Message: "partition is empty; omit it to receive every key"}
		}
		p, err := filter.ParsePartition(part)
		if err != nil {
			return nil, &apiError{status: http.StatusBadRequest, Code: codeBadPartition, Parameter: "partition", Message: err.Error()}
		}
		if p.Kind == filter.Range {
			for _, id := range selected {
				if t := cat.latest[id]; !t.IntegerKey() {
					return nil, &apiError{status: http.StatusBadRequest, Code: codeBadPartition, Parameter: "partition", Source: t.Name,
						Message: fmt.Sprintf("a range partition needs a single integer key, and source %q has key (%s); use a mod partition or select other sources", t.Name, strings.Join(t.Key, ", "))}
				}
			}
		}
		f.Partition = p
	}
	return &f, nil
}

// parseCheckpoint parses the checkpoint parameter and checks its mode.
func parseCheckpoint(vals map[string]string, want checkpoint.Mode, path string) (checkpoint.Checkpoint, *apiError) {
	s, ok := vals["checkpoint"]
	if !ok {
		return checkpoint.Checkpoint{}, badCheckpoint(`parameter "checkpoint" is required, in mode %q, with bootstrap.store and bootstrap.startScn from /v1/info`, want)
	}
	cp, err := checkpoint.Parse([]byte(s))
	if err != nil {
		return cp, badCheckpoint("%v", err)
	}
	if cp.Mode != want {
		return cp, badCheckpoint("checkpoint mode is %q: %s serves mode %q only", cp.Mode, path, want)
	}
	if cp.Bootstrap.Store == "" {
		return cp, badCheckpoint("bootstrap.store is empty: a bootstrap starts with the store id and headScn from /v1/info as bootstrap.store and bootstrap.startScn")
	}
	return cp, nil
}

// parseInt parses an optional integer parameter within [lo, hi].
func parseInt(vals map[string]string, name string, def, lo, hi int) (int, *apiError) {
	s, ok := vals[name]
	if !ok {
		return def, nil
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil {
		return 0, badParameter(name, "%s %q is not an integer; want %d..%d", name, s, lo, hi)
	}
	if n < int64(lo) || n > int64(hi) {
		return 0, badParameter(name, "%s %d is out of range; want %d..%d", name, n, lo, hi)
	}
	return int(n), nil
}

// pageQuery is a validated /v1/snapshot or /v1/catchup request.
type pageQuery struct {
	cp       checkpoint.Checkpoint
	filter   *filter.Filter // nil: every row
	maxBytes int
	maxRows  int
	after    *store.Cursor // snapshot only
}

func (s *Server) parsePageQuery(req *http.Request, params []string, mode checkpoint.Mode) (pageQuery, *apiError) {
	var q pageQuery
	vals, aerr := parseParams(req.URL.RawQuery, params)
	if aerr != nil {
		return q, aerr
	}
	if q.cp, aerr = parseCheckpoint(vals, mode, req.URL.Path); aerr != nil {
		return q, aerr
	}
	if mode == checkpoint.BootstrapSnapshot {
		c, err := decodeAfter(q.cp.Bootstrap.After)
		if err != nil {
			return q, badCheckpoint("bootstrap.after: %v; restart the snapshot or use the token of X-Databus-Snapshot-After as it was sent", err)
		}
		q.after = c
		if q.maxRows, aerr = parseInt(vals, "maxRows", s.cfg.MaxRows, 1, MaxMaxRows); aerr != nil {
			return q, aerr
		}
	}
	if q.maxBytes, aerr = parseInt(vals, "maxBytes", s.cfg.MaxBytes, MinMaxBytes, MaxMaxBytes); aerr != nil {
		return q, aerr
	}
	if c, ok := vals["client"]; ok && !validClient(c) {
		return q, badParameter("client", "client %q must be 1..%d characters of A-Z a-z 0-9 _ . : -", c, maxClientLen)
	}
	_, hasSources := vals["sources"]
	_, hasPartition := vals["partition"]
	if !hasSources && !hasPartition {
		return q, nil // no need for the schemas
	}
	cat, aerr := s.catalog(req.Context())
	if aerr != nil {
		return q, aerr
	}
	q.filter, aerr = parseFilter(vals, cat)
	return q, aerr
}

// maxClientLen bounds the client parameter, as on the relay.
const maxClientLen = 64

// validClient accepts the relay's client names: clients send the bootstrap
// server the name they send the relay. The server only checks it.
func validClient(s string) bool {
	if s == "" || len(s) > maxClientLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '_' || c == '.' || c == ':' || c == '-') {
			return false
		}
	}
	return true
}

// checkStore refuses a checkpoint of another store, or one naming an SCN
// beyond the head: serving it would mix two histories.
func checkStore(st store.State, cp checkpoint.Checkpoint, scn uint64, field string) *apiError {
	if cp.Bootstrap.Store != st.ID {
		return &apiError{status: http.StatusConflict, Code: codeForeignCheckpoint, Parameter: "checkpoint", Store: st.ID,
			Message: fmt.Sprintf("checkpoint belongs to bootstrap store %s, this server serves %s: start a new bootstrap from /v1/info", cp.Bootstrap.Store, st.ID)}
	}
	if scn > st.Head {
		head := st.Head
		return &apiError{status: http.StatusConflict, Code: codeForeignCheckpoint, Parameter: "checkpoint", Store: st.ID, HeadSCN: &head,
			Message: fmt.Sprintf("checkpoint %s %d is beyond this store's head %d: it was made against another copy of the store; start a new bootstrap", field, scn, st.Head)}
	}
	return nil
}

func notHeld(after, lowWatermark uint64, why string) *apiError {
	return &apiError{status: http.StatusGone, Code: codeSCNNotHeld, Parameter: "checkpoint", LowWatermark: &lowWatermark,
		Message: fmt.Sprintf("the bootstrap log does not hold the windows after scn %d (it serves checkpoints from scn %d)%s; start a new snapshot", after, lowWatermark, why)}
}

// handleSnapshot serves GET /v1/snapshot: one page of the snapshot at the
// checkpoint's startScn, after its bootstrap.after cursor.
func (s *Server) handleSnapshot(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	q, aerr := s.parsePageQuery(req, snapshotParams, checkpoint.BootstrapSnapshot)
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	st, err := s.st.State(ctx)
	if err != nil {
		s.writeError(w, s.storeError(ctx, "State", err))
		return
	}
	b := q.cp.Bootstrap
	if aerr := checkStore(st, q.cp, b.StartSCN, "bootstrap.startScn"); aerr != nil {
		s.writeError(w, aerr)
		return
	}
	if b.StartSCN < st.LowWatermark {
		// The rows are still there, but the catch-up that must follow
		// could not be served: fail now rather than after the whole
		// snapshot.
		s.writeError(w, notHeld(b.StartSCN, st.LowWatermark, ", so the catch-up after this snapshot could not be served"))
		return
	}
	buf := getPage()
	page, err := s.st.Snapshot(ctx, store.SnapshotQuery{AsOf: b.StartSCN, After: q.after, Filter: q.filter,
		MaxRows: q.maxRows, MaxBytes: q.maxBytes, Dst: (*buf)[:0]})
	if err != nil {
		putPage(buf, *buf)
		s.writeError(w, s.storeError(ctx, "Snapshot", err))
		return
	}
	defer putPage(buf, page.Frames)
	next, done := page.Next, page.Next == nil
	if next == nil && page.Rows > 0 {
		// The last page: the cursor of its last row still goes into the
		// checkpoint, so that a consumer resuming from it gets an empty,
		// done page instead of the snapshot again.
		if next, err = lastCursor(page.Frames); err != nil {
			s.log.Error("bootstrap store returned a corrupt snapshot page", "err", err)
			s.writeError(w, &apiError{status: http.StatusServiceUnavailable, Code: codeUnavailable,
				Message: fmt.Sprintf("the bootstrap store returned a corrupt snapshot page: %v", err)})
			return
		}
	}
	token := b.After
	if next != nil {
		token = encodeAfter(*next)
	}
	h := w.Header()
	h.Set(HeaderSnapshotAfter, token)
	h.Set(HeaderSnapshotDone, strconv.FormatBool(done))
	h.Set(HeaderRows, strconv.Itoa(page.Rows))
	h.Set(HeaderMaxSCN, strconv.FormatUint(st.Head, 10))
	s.writeFrames(w, page.Frames)
	s.m.snapshotPages.Inc()
	s.m.rowsOut.Add(float64(page.Rows))
}

// lastCursor returns the (source, key) of the last frame of a page.
func lastCursor(frames []byte) (*store.Cursor, error) {
	var last []byte
	for off := 0; off < len(frames); {
		n, err := event.FrameLen(frames[off:])
		if err != nil {
			return nil, err
		}
		if off+n > len(frames) {
			return nil, event.ErrShort
		}
		last = frames[off : off+n]
		off += n
	}
	if last == nil {
		return nil, errors.New("page has rows but no frame")
	}
	h, _ := event.PeekHeader(last)
	return &store.Cursor{Source: h.Source, Key: h.Key}, nil
}

// handleCatchup serves GET /v1/catchup: whole log windows after the
// checkpoint's scn, up to its bootstrap.targetScn.
func (s *Server) handleCatchup(w http.ResponseWriter, req *http.Request) {
	ctx := req.Context()
	q, aerr := s.parsePageQuery(req, catchupParams, checkpoint.BootstrapCatchup)
	if aerr != nil {
		s.writeError(w, aerr)
		return
	}
	st, err := s.st.State(ctx)
	if err != nil {
		s.writeError(w, s.storeError(ctx, "State", err))
		return
	}
	b := q.cp.Bootstrap
	// checkpoint.Validate keeps scn <= targetScn: checking the target
	// checks both.
	if aerr := checkStore(st, q.cp, b.TargetSCN, "bootstrap.targetScn"); aerr != nil {
		s.writeError(w, aerr)
		return
	}
	h := w.Header()
	h.Set(HeaderMaxSCN, strconv.FormatUint(st.Head, 10))
	h.Set(HeaderLowWatermark, strconv.FormatUint(st.LowWatermark, 10))
	buf := getPage()
	page, err := s.st.Log(ctx, store.LogQuery{After: q.cp.SCN, UpTo: b.TargetSCN, Filter: q.filter, MaxBytes: q.maxBytes, Dst: (*buf)[:0]})
	if err != nil {
		putPage(buf, *buf)
		var nh *store.NotHeldError
		if errors.As(err, &nh) {
			s.writeError(w, notHeld(nh.After, nh.LowWatermark, ""))
			return
		}
		s.writeError(w, s.storeError(ctx, "Log", err))
		return
	}
	defer putPage(buf, page.Frames)
	h.Set(HeaderLastSCN, strconv.FormatUint(page.Last, 10))
	h.Set(HeaderWindows, strconv.Itoa(page.Windows))
	s.writeFrames(w, page.Frames)
	s.m.catchupPages.Inc()
	s.m.windowsOut.Add(float64(page.Windows))
}

// writeFrames writes a page with its Content-Length, moving the write
// deadline with each chunk (see writeSlack).
func (s *Server) writeFrames(w http.ResponseWriter, frames []byte) {
	h := w.Header()
	h.Set("Content-Type", ContentTypeFrames)
	h.Set("Cache-Control", "no-store")
	h.Set("Content-Length", strconv.Itoa(len(frames)))
	w.WriteHeader(http.StatusOK)
	rc := http.NewResponseController(w)
	for off := 0; off < len(frames); {
		end := min(off+writeChunk, len(frames))
		_ = rc.SetWriteDeadline(time.Now().Add(writeSlack)) // not every ResponseWriter supports it
		n, err := w.Write(frames[off:end])
		s.m.bytesOut.Add(float64(n))
		if err != nil {
			return // the client went away; nothing to tell it
		}
		off = end
	}
}
