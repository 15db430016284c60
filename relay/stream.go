package relay

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
	"github.com/databus-go/databus/relay/buffer"
	"github.com/databus-go/databus/schema"
)

// Bounds and defaults of the /v1/stream parameters.
const (
	defaultMaxBytes = 1 << 20
	minMaxBytes     = 1 << 10
	maxMaxBytes     = 64 << 20
	defaultWait     = 5 * time.Second
	maxWait         = 60 * time.Second
	maxClientLen    = 64
	// maxScan bounds the bytes of windows one filtered response walks, so a
	// consumer of a rare source costs bounded work per request; it asks again.
	maxScan = 64 << 20
	// writeBufSize is the size of the pooled writer that coalesces small
	// windows into large writes.
	writeBufSize = 256 << 10
	// spillReadSize is the size of the reader of spilled windows' frames
	// on the filtered and JSON paths.
	spillReadSize = 64 << 10
)

// Content types of /v1/stream.
const (
	ContentTypeFrames = "application/x-databus-frames"
	ContentTypeNDJSON = "application/x-ndjson"
)

// Response headers of /v1/stream.
const (
	HeaderMaxSCN       = "X-Databus-Max-Scn"
	HeaderOldestSCN    = "X-Databus-Oldest-Scn"
	HeaderLowWatermark = "X-Databus-Low-Watermark"
)

// streamQuery is a validated /v1/stream request.
type streamQuery struct {
	after    uint64 // the checkpoint's SCN
	filter   filter.Filter
	maxBytes int
	wait     time.Duration
	json     bool
	client   string // "" when not given
}

var streamParams = []string{"checkpoint", "sources", "partition", "maxBytes", "wait", "format", "client"}

// parseStreamQuery validates every parameter of a /v1/stream query string.
// Every error it returns is a 400 naming the parameter.
func parseStreamQuery(raw string, reg *schema.Registry) (streamQuery, *apiError) {
	q := streamQuery{maxBytes: defaultMaxBytes, wait: defaultWait}
	vals, err := url.ParseQuery(raw)
	if err != nil {
		return q, badParameter("query", "the query string is malformed: %v", err)
	}
	names := make([]string, 0, len(vals))
	for name := range vals {
		names = append(names, name)
	}
	slices.Sort(names)
	for _, name := range names {
		if name == "" {
			return q, badParameter("query", "the query string has a parameter with no name")
		}
		if !slices.Contains(streamParams, name) {
			return q, badParameter(name, "unknown parameter %q; the parameters are %s", name, strings.Join(streamParams, ", "))
		}
		if n := len(vals[name]); n > 1 {
			return q, badParameter(name, "parameter %q is given %d times", name, n)
		}
	}
	get := func(name string) (string, bool) {
		v, ok := vals[name]
		if !ok {
			return "", false
		}
		return v[0], true
	}

	s, ok := get("checkpoint")
	if !ok {
		return q, &apiError{status: http.StatusBadRequest, Code: codeBadCheckpoint, Parameter: "checkpoint",
			Message: `parameter "checkpoint" is required, for example {"v":1,"mode":"online","scn":0}`}
	}
	cp, err := checkpoint.Parse([]byte(s))
	if err != nil {
		return q, &apiError{status: http.StatusBadRequest, Code: codeBadCheckpoint, Parameter: "checkpoint", Message: err.Error()}
	}
	if cp.Mode != checkpoint.Online {
		return q, &apiError{status: http.StatusBadRequest, Code: codeBadCheckpoint, Parameter: "checkpoint",
			Message: fmt.Sprintf("checkpoint mode is %q: the relay serves mode %q only; a bootstrapping consumer reads the bootstrap server", cp.Mode, checkpoint.Online)}
	}
	q.after = cp.SCN

	if s, ok := get("maxBytes"); ok {
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil {
			return q, badParameter("maxBytes", "maxBytes %q is not an integer; want %d..%d", s, minMaxBytes, maxMaxBytes)
		}
		if n < minMaxBytes || n > maxMaxBytes {
			return q, badParameter("maxBytes", "maxBytes %d is out of range; want %d..%d", n, minMaxBytes, maxMaxBytes)
		}
		q.maxBytes = int(n)
	}
	if s, ok := get("wait"); ok {
		d, err := time.ParseDuration(s)
		if err != nil {
			return q, badParameter("wait", "wait %q is not a Go duration such as 5s or 500ms; want 0s..%v", s, maxWait)
		}
		if d < 0 || d > maxWait {
			return q, badParameter("wait", "wait %v is out of range; want 0s..%v", d, maxWait)
		}
		q.wait = d
	}
	if s, ok := get("format"); ok {
		switch s {
		case "binary":
		case "json":
			q.json = true
		default:
			return q, badParameter("format", "format %q is unknown; want binary or json", s)
		}
	}
	if s, ok := get("client"); ok {
		if !validClient(s) {
			return q, badParameter("client", "client %q must be 1..%d characters of A-Z a-z 0-9 _ . : -", s, maxClientLen)
		}
		q.client = s
	}
	var selected []*schema.Entry
	if s, ok := get("sources"); ok {
		if s == "" {
			return q, badParameter("sources", "sources is empty; omit it to receive every source")
		}
		q.filter.Sources = map[uint32]struct{}{}
		for _, name := range strings.Split(s, ",") {
			if name == "" {
				return q, badParameter("sources", "sources %q has an empty name", s)
			}
			id, ok := reg.Lookup(name)
			if !ok {
				return q, &apiError{status: http.StatusBadRequest, Code: codeUnknownSource, Parameter: "sources", Source: name,
					Message: fmt.Sprintf("source %q is not captured by this relay (see /v1/sources)", name)}
			}
			q.filter.Sources[id] = struct{}{}
			if e, ok := reg.Latest(id); ok {
				selected = append(selected, e)
			}
		}
	} else {
		selected = reg.Latests()
	}
	if s, ok := get("partition"); ok {
		if s == "" {
			return q, &apiError{status: http.StatusBadRequest, Code: codeBadPartition, Parameter: "partition",
				Message: "partition is empty; omit it to receive every key"}
		}
		p, err := filter.ParsePartition(s)
		if err != nil {
			return q, &apiError{status: http.StatusBadRequest, Code: codeBadPartition, Parameter: "partition", Message: err.Error()}
		}
		if p.Kind == filter.Range {
			for _, e := range selected {
				if !e.IntegerKey() {
					return q, &apiError{status: http.StatusBadRequest, Code: codeBadPartition, Parameter: "partition", Source: e.Name,
						Message: fmt.Sprintf("a range partition needs a single integer key, and source %q has key (%s); use a mod partition or select other sources", e.Name, strings.Join(e.Key, ", "))}
				}
			}
		}
		q.filter.Partition = p
	}
	return q, nil
}

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

// remoteHost is the default client id: the request's remote host.
func remoteHost(addr string) string {
	if h, _, err := net.SplitHostPort(addr); err == nil {
		return h
	}
	return addr
}

// streamBuf is the pooled per-request scratch of /v1/stream.
type streamBuf struct {
	ws      []buffer.Window
	scratch []byte
	bw      *bufio.Writer
	br      *bufio.Reader // of a spilled window's frames; nil until needed
	frame   []byte        // a spilled frame larger than br's buffer
	dw      deadlineWriter
}

// streamBufs is a free list rather than a sync.Pool: a pool is emptied by
// every garbage collection, and with a full buffer collections are frequent
// (see the memory limit in Config), so a pool would reallocate a 256 KiB
// writer for most responses. It keeps at most freeStreamBufs of them
// (about 4 MiB); more concurrent responses allocate and drop their own.
var streamBufs = make(chan *streamBuf, freeStreamBufs)

const freeStreamBufs = 16

func getStreamBuf() *streamBuf {
	select {
	case sb := <-streamBufs:
		return sb
	default:
		return &streamBuf{ws: make([]buffer.Window, 0, 1024), bw: bufio.NewWriterSize(io.Discard, writeBufSize)}
	}
}

func (sb *streamBuf) release() {
	buffer.Release(sb.ws) // spilled windows' files
	clear(sb.ws)          // drop references to window data, evicted or not
	sb.ws = sb.ws[:0]
	sb.bw.Reset(io.Discard)
	if sb.br != nil {
		sb.br.Reset(nil)
	}
	sb.dw = deadlineWriter{}
	if cap(sb.scratch) > 4*writeBufSize {
		sb.scratch = nil // do not keep one huge window's worth
	}
	sb.scratch = sb.scratch[:0]
	if cap(sb.frame) > 4*writeBufSize {
		sb.frame = nil
	}
	select {
	case streamBufs <- sb:
	default:
	}
}

var errClosing = errors.New("databus: the relay is shutting down")

// handleStream serves GET /v1/stream (docs/PROTOCOL.md).
func (r *Relay) handleStream(w http.ResponseWriter, req *http.Request) {
	q, aerr := parseStreamQuery(req.URL.RawQuery, r.reg)
	if aerr != nil {
		if aerr.Source != "" && !r.isOpened() {
			// Before the source is open the relay may not know its tables
			// yet: say "not yet", which clients retry, rather than "never".
			aerr = &apiError{status: http.StatusServiceUnavailable, Code: codeUnavailable, Source: aerr.Source,
				Message: fmt.Sprintf("the relay is starting: its source is not open yet, so it cannot check source %q; retry", aerr.Source)}
		}
		r.writeError(w, aerr)
		return
	}
	id := q.client
	if id == "" {
		id = remoteHost(req.RemoteAddr)
	}
	id = r.clients.begin(id, req.RemoteAddr, r.now())
	defer func() { r.clients.end(id, r.now()) }()

	rc := http.NewResponseController(w)
	_ = rc.SetWriteDeadline(time.Now().Add(q.wait + writeSlack)) // not every ResponseWriter supports it

	sb := getStreamBuf()
	defer sb.release()
	ws, err := r.waitWindows(req.Context(), &q, sb.ws[:0])
	sb.ws = ws
	r.setHeaders(w, id, q.after)
	var notHeld *buffer.SCNNotHeldError
	switch {
	case errors.As(err, &notHeld):
		r.writeError(w, &apiError{status: http.StatusGone, Code: codeSCNNotHeld, Parameter: "checkpoint",
			Message: notHeld.Error(), OldestSCN: &notHeld.OldestSCN, LowWatermark: &notHeld.LowWatermark})
		return
	case errors.Is(err, errClosing):
		r.writeError(w, &apiError{status: http.StatusServiceUnavailable, Code: codeUnavailable, Message: err.Error()})
		return
	case err != nil: // the client went away
		return
	}
	h := w.Header()
	h.Set("Cache-Control", "no-store")
	if q.json {
		h.Set("Content-Type", ContentTypeNDJSON)
	} else {
		h.Set("Content-Type", ContentTypeFrames)
	}
	if len(ws) == 0 {
		h.Set("Content-Length", "0")
		w.WriteHeader(http.StatusOK)
		return
	}
	sb.bw.Reset(w)
	for i := range ws {
		if ws[i].Spill != nil {
			// A spilled window may be far larger than any in memory: the
			// write deadline moves with progress instead (a stalled client
			// still times out).
			sb.dw = deadlineWriter{w: w, rc: rc}
			sb.bw.Reset(&sb.dw)
			break
		}
	}
	var out, windows, events int
	if q.filter.All() && !q.json {
		out, windows, events = writeWhole(w, sb.bw, ws)
	} else {
		out, windows, events = r.writeFiltered(w, sb, &q)
	}
	if err := sb.bw.Flush(); err == nil {
		_ = rc.Flush()
	}
	r.m.bytesOut.Add(float64(out))
	r.m.windowsOut.Add(float64(windows))
	r.m.eventsOut.Add(float64(events))
}

// waitWindows reads the windows after q.after, long-polling up to q.wait
// when there are none yet. Changed is taken before the Read that may come
// back empty, so an Append between them is never missed.
func (r *Relay) waitWindows(ctx context.Context, q *streamQuery, ws []buffer.Window) ([]buffer.Window, error) {
	ws, err := r.buf.Read(q.after, q.maxBytes, ws)
	if err != nil || len(ws) > 0 || q.wait == 0 {
		return ws, err
	}
	timer := time.NewTimer(q.wait)
	defer timer.Stop()
	for {
		changed := r.buf.Changed()
		ws, err = r.buf.Read(q.after, q.maxBytes, ws)
		if err != nil || len(ws) > 0 {
			return ws, err
		}
		select {
		case <-changed:
			select {
			case <-r.closing:
				return ws, errClosing
			default:
			}
		case <-timer.C:
			return ws, nil
		case <-ctx.Done():
			return ws, ctx.Err()
		case <-r.closing:
			return ws, errClosing
		}
	}
}

// setHeaders sets the buffer headers and records the client's lag.
func (r *Relay) setHeaders(w http.ResponseWriter, id string, after uint64) {
	in := r.buf.Info()
	newest := max(r.buf.LastSCN(), in.MaxSCN)
	h := w.Header()
	h.Set(HeaderMaxSCN, strconv.FormatUint(newest, 10))
	h.Set(HeaderOldestSCN, strconv.FormatUint(in.MinSCN, 10))
	h.Set(HeaderLowWatermark, strconv.FormatUint(in.LowWatermark, 10))

	var lagSCN uint64
	var lagSec float64
	if newest > after {
		lagSCN = newest - after
		if in.Windows > 0 {
			ts, ok := r.buf.TimestampAt(after)
			if !ok { // the checkpoint's window is not held: at least the whole buffer behind
				ts = in.OldestTimestamp
			}
			lagSec = max(0, float64(in.NewestTimestamp-ts)/1e9)
		}
	}
	r.clients.lag(id, after, lagSCN, lagSec)
}

// writeWhole is the fast path: the windows' frames are written as they are
// held, with no per-frame work. Windows that lie side by side in memory (see
// arena) go out as one slice, which the write buffer passes straight to the
// connection when it is large; only scattered small windows are copied.
// Spilled windows are copied from their files through the write buffer.
func writeWhole(w http.ResponseWriter, bw *bufio.Writer, ws []buffer.Window) (out, windows, events int) {
	for i := range ws {
		out += int(ws[i].Len())
		events += ws[i].Events
	}
	w.Header().Set("Content-Length", strconv.Itoa(out))
	var run []byte
	for i := range ws {
		if sp := ws[i].Spill; sp != nil {
			if _, err := bw.Write(run); err != nil {
				return out, len(ws), events
			}
			run = nil
			if _, err := bw.ReadFrom(sp.Reader()); err != nil {
				return out, len(ws), events
			}
			continue
		}
		d := ws[i].Data
		if adjacent(run, d) {
			run = run[:len(run)+len(d)]
			continue
		}
		if _, err := bw.Write(run); err != nil {
			return out, len(ws), events
		}
		run = d
	}
	bw.Write(run)
	return out, len(ws), events
}

// deadlineWriter moves the connection's write deadline writeSlack ahead
// before each write, so that a response takes as long as it needs while
// the client keeps reading, and no longer than writeSlack once it stops.
type deadlineWriter struct {
	w  io.Writer
	rc *http.ResponseController
}

func (d *deadlineWriter) Write(p []byte) (int, error) {
	_ = d.rc.SetWriteDeadline(time.Now().Add(writeSlack))
	return d.w.Write(p)
}

// adjacent reports whether b starts where a ends, in the same array, so that
// a[:len(a)+len(b)] covers both.
func adjacent(a, b []byte) bool {
	return len(a) > 0 && len(b) > 0 && cap(a)-len(a) >= len(b) && &a[:len(a)+1][len(a)] == &b[0]
}

// writeFiltered renders each window (filtered frames, or JSON lines) into
// scratch and writes it when it fits the budget: at least one window, then
// more while the total stays within maxBytes, reading past the first batch
// when filtering shrank it. A spilled window is rendered frame by frame,
// straight to the connection, and only as the first window of a response,
// since its size is known only once it is sent. When the whole response
// fits the write buffer it gets a Content-Length.
func (r *Relay) writeFiltered(w http.ResponseWriter, sb *streamBuf, q *streamQuery) (out, windows, events int) {
	ws := sb.ws
	scanned := 0
	for len(ws) > 0 {
		var after uint64
		for i := range ws {
			if sp := ws[i].Spill; sp != nil {
				if windows > 0 {
					return finish(w, sb, out), windows, events
				}
				o, n, err := r.writeSpilled(sb, sp, q)
				out += o
				events += n
				if err != nil {
					return out, windows, events
				}
				windows++
				scanned += int(sp.Size())
				after = ws[i].SCN
				continue
			}
			var n int
			if q.json {
				sb.scratch, n = r.renderJSON(sb.scratch[:0], ws[i].Data)
			} else {
				sb.scratch, n = filterWindow(sb.scratch[:0], ws[i].Data, &q.filter)
			}
			if windows > 0 && out+len(sb.scratch) > q.maxBytes {
				return finish(w, sb, out), windows, events
			}
			if _, err := sb.bw.Write(sb.scratch); err != nil {
				return out, windows, events
			}
			out += len(sb.scratch)
			windows++
			events += n
			scanned += len(ws[i].Data)
			after = ws[i].SCN
		}
		if out >= q.maxBytes || scanned >= maxScan {
			break
		}
		buffer.Release(ws)
		clear(ws)
		var err error
		if ws, err = r.buf.Read(after, q.maxBytes, ws[:0]); err != nil {
			ws = ws[:0] // evicted meanwhile: the next request gets the 410
		}
		sb.ws = ws
	}
	return finish(w, sb, out), windows, events
}

// writeSpilled renders a spilled window frame by frame (filtered, or as
// JSON) into the response. It returns the bytes written and data events
// kept; an error means the response is cut short.
func (r *Relay) writeSpilled(sb *streamBuf, sp *buffer.Spill, q *streamQuery) (out, events int, err error) {
	if sb.br == nil {
		sb.br = bufio.NewReaderSize(nil, spillReadSize)
	}
	sb.br.Reset(sp.Reader())
	for {
		var frame []byte
		frame, sb.frame, err = readFrame(sb.br, sb.frame)
		if err == io.EOF {
			return out, events, nil
		}
		if err != nil {
			r.log.Error("reading a spilled window", "file", sp.Path(), "err", err)
			return out, events, err
		}
		var n int
		if q.json {
			sb.scratch, n = r.renderJSON(sb.scratch[:0], frame)
		} else {
			sb.scratch, n = filterWindow(sb.scratch[:0], frame, &q.filter)
		}
		if _, err := sb.bw.Write(sb.scratch); err != nil {
			return out, events, err
		}
		out += len(sb.scratch)
		events += n
	}
}

// readFrame returns the next frame of br: aliasing br's buffer (valid until
// the next read) when it fits there, else read into buf, which it returns
// grown. It returns io.EOF at the end of the frames.
func readFrame(br *bufio.Reader, buf []byte) (frame, grown []byte, err error) {
	h, err := br.Peek(event.HeaderSize)
	if err == io.EOF && len(h) == 0 {
		return nil, buf, io.EOF
	}
	if err != nil {
		return nil, buf, fmt.Errorf("frame header: %w", io.ErrUnexpectedEOF)
	}
	n, err := event.FrameLen(h)
	if err != nil {
		return nil, buf, err
	}
	if n <= br.Size() {
		if frame, err = br.Peek(n); err != nil {
			return nil, buf, fmt.Errorf("frame: %w", io.ErrUnexpectedEOF)
		}
		_, err = br.Discard(n)
		return frame, buf, err
	}
	if cap(buf) < n {
		buf = make([]byte, n)
	}
	if _, err := io.ReadFull(br, buf[:n]); err != nil {
		return nil, buf, fmt.Errorf("frame: %w", io.ErrUnexpectedEOF)
	}
	return buf[:n], buf, nil
}

// finish sets Content-Length when nothing has been written through yet.
func finish(w http.ResponseWriter, sb *streamBuf, out int) int {
	if sb.bw.Buffered() == out {
		w.Header().Set("Content-Length", strconv.Itoa(out))
	}
	return out
}

// filterWindow appends to dst the frames of one window that f passes (every
// end-of-window and schema-change frame), copying runs of consecutive
// passing frames at once. It returns the data events kept.
func filterWindow(dst, data []byte, f *filter.Filter) ([]byte, int) {
	events, run := 0, 0 // data[run:off] passes
	off := 0
	for off < len(data) {
		h, n := event.PeekHeader(data[off:])
		if f.Match(h) {
			if h.Kind == event.KindData {
				events++
			}
		} else {
			dst = append(dst, data[run:off]...)
			run = off + n
		}
		off += n
	}
	return append(dst, data[run:]...), events
}
