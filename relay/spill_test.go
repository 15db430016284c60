package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/filter"
	"github.com/databus-go/databus/relay/buffer"
	"github.com/databus-go/databus/source"
)

// chunking is a memSource whose Run emits every window of more than every
// events as chunks (source.Window.Partial) of every events followed by the
// final window, as an adapter reading a large transaction does. Each chunk
// is a copy (keys and images included) that chunking scribbles over once
// emit returns, so a relay that kept a chunk's memory would serve garbage.
type chunking struct {
	*memSource
	every int

	mu sync.Mutex
	// failAfter: the window with this SCN makes Run return errChunks after
	// that many chunks, once.
	failAfter map[uint64]int
	// abandonAfter: the window with this SCN is abandoned (a chunk with
	// Abandon) after that many chunks and then emitted again from its
	// start, once.
	abandonAfter map[uint64]int
	// badChunk: the chunks of the window with this SCN carry their events'
	// real SCN, breaking the contract.
	badChunk uint64
}

var errChunks = errors.New("chunking: the connection broke inside a transaction")

func newChunking(t testing.TB, every int) *chunking {
	return &chunking{memSource: newMemSource(t), every: every, failAfter: map[uint64]int{}, abandonAfter: map[uint64]int{}}
}

func (s *chunking) once(m map[uint64]int, scn uint64) (int, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	n, ok := m[scn]
	delete(m, scn)
	return n, ok
}

func (s *chunking) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	return s.memSource.Run(ctx, from, func(ctx context.Context, w *source.Window) error {
		if len(w.Events) <= s.every {
			return emit(ctx, w)
		}
		return s.emitChunked(ctx, w, emit)
	})
}

func (s *chunking) emitChunked(ctx context.Context, w *source.Window, emit func(context.Context, *source.Window) error) error {
	failAt, fail := s.once(s.failAfter, w.SCN)
	abandonAt, abandon := s.once(s.abandonAfter, w.SCN)
	var chunk []event.Event
	var arena []byte
	evs := w.Events
	for chunks := 0; len(evs) > s.every; chunks++ {
		if fail && chunks == failAt {
			return errChunks
		}
		if abandon && chunks == abandonAt {
			abandon = false
			if err := emit(ctx, &source.Window{Partial: true, Abandon: true}); err != nil {
				return err
			}
			evs, chunks = w.Events, -1
			continue
		}
		// Copy the chunk's bytes into arena, then point its events there.
		arena = arena[:0]
		for _, e := range evs[:s.every] {
			arena = append(append(append(arena, e.Key...), e.Payload...), e.Before...)
		}
		chunk, off := chunk[:0], 0
		for _, e := range evs[:s.every] {
			k, p, b := len(e.Key), len(e.Payload), len(e.Before)
			e.Key = arena[off : off+k : off+k]
			if e.Payload != nil {
				e.Payload = arena[off+k : off+k+p : off+k+p]
			}
			if e.Before != nil {
				e.Before = arena[off+k+p : off+k+p+b : off+k+p+b]
			}
			off += k + p + b
			e.SCN, e.Timestamp = 0, 0
			if w.SCN == s.badChunk {
				e.SCN = w.SCN
			}
			chunk = append(chunk, e)
		}
		if err := emit(ctx, &source.Window{Partial: true, Events: chunk}); err != nil {
			return err
		}
		for i := range arena {
			arena[i] = 0xa5 // the adapter reuses its memory
		}
		for i := range chunk {
			chunk[i] = event.Event{Kind: event.KindData, Op: event.OpDelete, SCN: 1}
		}
		evs = evs[s.every:]
	}
	final := *w
	final.Events = evs
	return emit(ctx, &final)
}

// bigWindow builds a window of n data events over the three sources, with
// db.order changing to version 2 halfway through, about 200 bytes an event.
func bigWindow(m *memSource, scn uint64, n int) source.Window {
	w := source.Window{SCN: scn, Timestamp: int64(1_700_000_000_000_000_000 + scn*1_000_000), TxID: fmt.Sprintf("0-1-%d", scn),
		Position: source.Position{SCN: scn, Data: json.RawMessage(fmt.Sprintf(`{"off":%d}`, scn*7))}}
	orderVersion := uint16(1)
	pad := strings.Repeat("p", 120)
	for i := range n {
		if i == n/2 {
			sc, _ := event.NewSchemaChange(scn, w.Timestamp, event.SchemaChange{Source: 2, Name: orderV2.Name, Version: 2, Key: orderV2.Key, Avro: orderV2.AvroSchema()})
			w.Events = append(w.Events, sc)
			orderVersion = 2
		}
		id := int64(scn)*100000 + int64(i)
		e := event.Event{Kind: event.KindData, SCN: scn, Timestamp: w.Timestamp, Op: event.Op(i%3 + 1)}
		var row map[string]any
		switch i % 3 {
		case 0:
			e.Source, e.SchemaVersion = 1, 1
			e.Key = event.AppendKeyInt(nil, id)
			row = map[string]any{"id": id, "name": fmt.Sprintf("p%d-%s", id, pad), "score": float64(id) / 4}
		case 1:
			e.Source, e.SchemaVersion = 2, orderVersion
			e.Key = event.AppendKeyInt(nil, -id)
			row = map[string]any{"id": -id, "amount": big.NewRat(id*100+5, 100), "person_id": id}
			if orderVersion == 2 {
				row["note"] = pad
			}
		case 2:
			e.Source, e.SchemaVersion = 3, 1
			name := fmt.Sprintf("tag-%d-%s", id, pad)
			e.Key = event.AppendKeyString(nil, name)
			row = map[string]any{"name": name, "count": id}
		}
		img := m.encode(e.Source, e.SchemaVersion, row)
		if e.Op != event.OpDelete {
			e.Payload = img
		}
		if e.Op != event.OpInsert {
			e.Before, e.HasBefore = img, true
		}
		w.Events = append(w.Events, e)
	}
	return w
}

// frames is the encoding a relay serves for a whole window w.
func frames(t testing.TB, w source.Window) []byte {
	t.Helper()
	var b []byte
	var count uint32
	for i := range w.Events {
		var err error
		if b, err = event.AppendFrame(b, &w.Events[i]); err != nil {
			t.Fatal(err)
		}
		if w.Events[i].Kind == event.KindData {
			count++
		}
	}
	eow := event.EndOfWindow(w.SCN, w.Timestamp, count, w.TxID)
	b, _ = event.AppendFrame(b, &eow)
	return b
}

// spillFiles lists the files in the relay's spill directory.
func spillFiles(t testing.TB, stateDir string) []string {
	t.Helper()
	es, err := os.ReadDir(filepath.Join(stateDir, spillDirName))
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range es {
		names = append(names, e.Name())
	}
	return names
}

// streamWindow requests the window after checkpoint scn, with maxBytes at
// its minimum (unless extra sets it) so that the response holds that
// window alone.
func (h *harness) streamWindow(after uint64, extra ...string) []byte {
	h.t.Helper()
	params := []string{"checkpoint", cp(after), "wait", "0s"}
	if !slices.Contains(extra, "maxBytes") {
		params = append(params, "maxBytes", "1024")
	}
	resp, body := h.stream(append(params, extra...)...)
	if resp.StatusCode != 200 {
		h.t.Fatalf("stream from %d: %d %s", after, resp.StatusCode, body)
	}
	return body
}

// TestSpilledWindow: a window larger than the whole buffer, arriving in
// chunks, is spilled to a file and served whole (byte for byte what an
// unchunked window encodes to), alone and among others, filtered and as
// JSON; evicting it deletes its file, while a reader holding it keeps
// reading.
func TestSpilledWindow(t *testing.T) {
	src := newChunking(t, 500)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	src.add(5) // scn 10..50
	big := bigWindow(src.memSource, 100, 3000)
	want := frames(t, big)
	if len(want) < 4*64<<10 {
		t.Fatalf("the big window is only %d bytes", len(want))
	}
	src.addWindow(big)
	last := src.add(3) // 110..130
	h := startRelaySource(t, src.memSource, src, cfg)
	h.waitSCN(last)

	in := h.r.Buffer().Info()
	if in.SpilledWindows != 1 || in.SpillBytes != int64(len(want)) || in.Windows != 9 || in.Bytes > in.MaxBytes {
		t.Fatalf("buffer %+v; want 9 windows, one of them spilled (%d bytes)", in, len(want))
	}
	if got := spillFiles(t, cfg.StateDir); len(got) != 1 || got[0] != "100.win" {
		t.Errorf("spill directory holds %v, want [100.win]", got)
	}
	if b, err := os.ReadFile(filepath.Join(cfg.StateDir, spillDirName, "100.win")); err != nil || !bytes.Equal(b, want) {
		t.Errorf("100.win differs from the window's frames (%d bytes, want %d; %v)", len(b), len(want), err)
	}
	if got := h.metric("databus_relay_chunks_in_total"); got != 6 {
		t.Errorf("chunks_in_total %v, want 6", got)
	}

	// Alone (a budget smaller than the window): whole, byte for byte, every
	// frame with the window's SCN and commit time.
	body := h.streamWindow(50)
	if !bytes.Equal(body, want) {
		t.Fatalf("the spilled window was served as %d bytes differing from its %d bytes", len(body), len(want))
	}
	ws := parseWindows(t, body)
	if len(ws) != 1 || ws[0].scn != 100 || len(ws[0].events) != 3001 {
		t.Fatalf("%d windows", len(ws))
	}
	for _, e := range ws[0].events {
		if e.SCN != 100 || e.Timestamp != big.Timestamp {
			t.Fatalf("frame stamped scn %d ts %d", e.SCN, e.Timestamp)
		}
	}
	// Among others, with a budget that takes them all.
	all := h.readAll(0, "maxBytes", "67108864")
	if len(all) != 9 || all[5].scn != 100 || all[4].scn != 50 || all[6].scn != 110 {
		t.Fatalf("readAll: %d windows", len(all))
	}
	// Filtered: the same frames as the in-memory filter would keep, per
	// source and per partition.
	for _, c := range []struct{ sources, partition string }{{"db.person", ""}, {"", "mod:1/3"}, {"db.order,db.tag", "mod:0/2"}} {
		var f filter.Filter
		var extra []string
		if c.sources != "" {
			f.Sources = map[uint32]struct{}{}
			for _, name := range strings.Split(c.sources, ",") {
				id, _ := h.r.Registry().Lookup(name)
				f.Sources[id] = struct{}{}
			}
			extra = append(extra, "sources", c.sources)
		}
		if c.partition != "" {
			p, err := filter.ParsePartition(c.partition)
			if err != nil {
				t.Fatal(err)
			}
			f.Partition = p
			extra = append(extra, "partition", c.partition)
		}
		wantF, n := filterWindow(nil, want, &f)
		got := h.streamWindow(50, extra...)
		if !bytes.Equal(got, wantF) || n == 0 || n == 3000 {
			t.Errorf("sources %q partition %q: %d bytes, want %d (%d events)", c.sources, c.partition, len(got), len(wantF), n)
		}
		// The response goes on after the spilled window when the budget
		// allows it.
		resp, body := h.stream(append([]string{"checkpoint", cp(50), "wait", "0s", "maxBytes", "67108864"}, extra...)...)
		if ws := parseWindows(t, body); resp.StatusCode != 200 || len(ws) != 4 || ws[0].scn != 100 || ws[3].scn != 130 {
			t.Errorf("sources %q partition %q from 50: %d %d windows", c.sources, c.partition, resp.StatusCode, len(ws))
		}
		// A spilled window is never appended to a filtered response that
		// already holds one.
		if ws := parseWindows(t, h.streamWindow(40, append(extra, "maxBytes", "67108864")...)); len(ws) != 1 || ws[0].scn != 50 {
			t.Errorf("sources %q partition %q from 40: %d windows", c.sources, c.partition, len(ws))
		}
	}
	// JSON: the lines the in-memory renderer makes of the same frames.
	wantJ, _ := h.r.renderJSON(nil, want)
	if got := h.streamWindow(50, "format", "json"); !bytes.Equal(got, wantJ) {
		t.Errorf("JSON of the spilled window: %d bytes, want %d", len(got), len(wantJ))
	}
	if !bytes.Contains(wantJ, []byte(`"note":"ppp`)) {
		t.Error("the version-2 rows after the schema change inside the window did not decode")
	}

	// A reader holding the window when it is evicted keeps reading it; the
	// file is gone at once.
	held, err := h.r.Buffer().Read(50, 1, nil)
	if err != nil || len(held) != 1 || held[0].Spill == nil {
		t.Fatalf("Read: %v, %d windows", err, len(held))
	}
	last = src.add(400)
	h.waitSCN(last)
	if in := h.r.Buffer().Info(); in.LowWatermark < 100 || in.SpilledWindows != 0 || in.SpillBytes != 0 {
		t.Fatalf("the big window was not evicted: %+v", in)
	}
	if got := spillFiles(t, cfg.StateDir); len(got) != 0 {
		t.Errorf("spill files after eviction: %v", got)
	}
	if b, err := io.ReadAll(held[0].Spill.Reader()); err != nil || !bytes.Equal(b, want) {
		t.Errorf("an evicted window's reader read %d bytes (%v)", len(b), err)
	}
	buffer.Release(held)
	resp, body := h.stream("checkpoint", cp(50), "wait", "0s")
	if resp.StatusCode != 410 {
		t.Errorf("from 50 after eviction: %d %s", resp.StatusCode, body)
	}
}

// TestSmallChunkedWindow: a chunked window below the spill threshold is
// built in memory from its spooled chunks.
func TestSmallChunkedWindow(t *testing.T) {
	src := newChunking(t, 7)
	cfg := testConfig(t) // 4 MiB: windows up to 256 KiB stay in memory
	src.add(2)
	w := bigWindow(src.memSource, 100, 40)
	src.addWindow(w)
	last := src.add(1)
	h := startRelaySource(t, src.memSource, src, cfg)
	h.waitSCN(last)
	if in := h.r.Buffer().Info(); in.SpilledWindows != 0 || in.Windows != 4 {
		t.Fatalf("buffer %+v", in)
	}
	if got := h.streamWindow(20); !bytes.Equal(got, frames(t, w)) {
		t.Errorf("the window was served as %d bytes, want its %d", len(got), len(frames(t, w)))
	}
	if got := spillFiles(t, cfg.StateDir); len(got) != 0 {
		t.Errorf("spill files left: %v", got)
	}
	if got := h.metric("databus_relay_chunks_in_total"); got != 5 {
		t.Errorf("chunks_in_total %v, want 5", got)
	}
}

// TestUnchunkedLargeWindow: a window a source emits whole, larger than the
// buffer, is spilled too.
func TestUnchunkedLargeWindow(t *testing.T) {
	src := newMemSource(t)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	src.add(1)
	w := bigWindow(src, 100, 1000)
	src.addWindow(w)
	h := startRelay(t, src, cfg)
	h.waitSCN(100)
	if in := h.r.Buffer().Info(); in.SpilledWindows != 1 {
		t.Fatalf("buffer %+v", in)
	}
	if got := h.streamWindow(10); !bytes.Equal(got, frames(t, w)) {
		t.Errorf("the window was served as %d bytes, want its %d", len(got), len(frames(t, w)))
	}
}

// TestAbandonedChunks: chunks without their final window (Run returning
// in the middle, or an abandoning chunk) are discarded, and the window the
// source emits again is served once, whole.
func TestAbandonedChunks(t *testing.T) {
	src := newChunking(t, 400)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	src.add(2) // 10, 20
	w1, w2 := bigWindow(src.memSource, 100, 3000), bigWindow(src.memSource, 200, 3000)
	src.addWindow(w1)
	src.add(1) // 110
	src.addWindow(w2)
	last := src.add(1)
	src.failAfter[100] = 3    // Run returns after 3 chunks of window 100
	src.abandonAfter[200] = 2 // window 200 is abandoned after 2 chunks, then emitted again
	h := startRelaySource(t, src.memSource, src, cfg)
	h.waitSCN(last)
	for _, w := range []source.Window{w1, w2} {
		var after uint64
		for _, x := range src.windowsAfter(0) {
			if x.SCN < w.SCN {
				after = x.SCN
			}
		}
		if got := h.streamWindow(after); !bytes.Equal(got, frames(t, w)) {
			ws := parseWindows(t, got)
			t.Errorf("window %d served as %d bytes (%d windows), want its %d", w.SCN, len(got), len(ws), len(frames(t, w)))
		}
	}
	if got := h.metric("databus_relay_windows_abandoned_total"); got != 2 {
		t.Errorf("windows_abandoned_total %v, want 2", got)
	}
	if runs, _, _, _ := src.stats(); len(runs) != 2 || runs[1].SCN != 20 {
		t.Errorf("runs %+v; want a second run from scn 20", runs)
	}
	if got := spillFiles(t, cfg.StateDir); len(got) != 2 || got[0] != "100.win" || got[1] != "200.win" {
		t.Errorf("spill directory holds %v", got)
	}
	if got := h.readAll(0); len(got) != 6 {
		t.Errorf("%d windows, want 6", len(got))
	}
}

// TestSpillRestart: spilled files of an earlier run are deleted at start,
// and the windows the source emits again are spilled and served anew.
func TestSpillRestart(t *testing.T) {
	src := newChunking(t, 500)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	src.add(2)
	w := bigWindow(src.memSource, 100, 3000)
	src.addWindow(w)
	last := src.add(2)
	h1 := startRelaySource(t, src.memSource, src, cfg)
	h1.waitSCN(last)
	h1.stop()
	if got := spillFiles(t, cfg.StateDir); len(got) != 0 {
		t.Errorf("spill files after a clean stop: %v", got)
	}
	// As a crash would leave them: a stale segment and a spool.
	dir := filepath.Join(cfg.StateDir, spillDirName)
	for _, name := range []string{"100.win", "chunks-123.tmp", "999.win"} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte("stale"), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	h2 := startRelaySource(t, src.memSource, src, cfg)
	h2.waitSCN(last)
	if got := spillFiles(t, cfg.StateDir); len(got) != 1 || got[0] != "100.win" {
		t.Errorf("spill directory after the restart holds %v, want [100.win]", got)
	}
	if got := h2.streamWindow(20); !bytes.Equal(got, frames(t, w)) {
		t.Errorf("after the restart the window was served as %d bytes, want its %d", len(got), len(frames(t, w)))
	}
}

// TestSpillTooLarge: a window outgrowing buffer.maxSpillBytes while its
// chunks arrive stops capture with an error naming the setting, and leaves
// no file behind.
func TestSpillTooLarge(t *testing.T) {
	src := newChunking(t, 500)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	cfg.Buffer.MaxSpillBytes = 256 * KiB
	src.add(5)
	src.addWindow(bigWindow(src.memSource, 100, 3000)) // about 600 KiB
	src.add(1)
	h := startRelaySource(t, src.memSource, src, cfg)
	waitFor(t, "capture to stop", func() bool { return h.metric("databus_relay_capture_stopped") == 1 })
	_, body := h.get("/healthz")
	var hz health
	json.Unmarshal(body, &hz)
	if !strings.Contains(hz.Error, "buffer.maxSpillBytes") || !strings.Contains(hz.Error, "after scn 50") || hz.MaxSCN != 50 {
		t.Errorf("healthz: %s", body)
	}
	if got := spillFiles(t, cfg.StateDir); len(got) != 0 {
		t.Errorf("spill files left: %v", got)
	}
	if runs, _, _, _ := src.stats(); len(runs) != 1 {
		t.Errorf("capture retried a permanent error: %d runs", len(runs))
	}
	if ws := h.readAll(0); len(ws) != 5 {
		t.Errorf("the relay serves %d windows, want the 5 before the big one", len(ws))
	}
}

// TestChunkContract: chunks whose events carry an SCN break the contract
// and stop capture.
func TestChunkContract(t *testing.T) {
	src := newChunking(t, 100)
	cfg := testConfig(t)
	src.add(1)
	src.addWindow(bigWindow(src.memSource, 100, 300))
	src.badChunk = 100
	h := startRelaySource(t, src.memSource, src, cfg)
	waitFor(t, "capture to stop", func() bool { return h.metric("databus_relay_capture_stopped") == 1 })
	_, body := h.get("/healthz")
	if !strings.Contains(string(body), "partial window has scn 100") {
		t.Errorf("healthz: %s", body)
	}
}

// TestRestamp checks restamp against the event encoder.
func TestRestamp(t *testing.T) {
	e := event.Event{Kind: event.KindData, Op: event.OpUpdate, Source: 3, SchemaVersion: 2, Key: []byte("k"), Payload: []byte("p"), Before: []byte("b"), HasBefore: true}
	b, _ := event.AppendFrame(nil, &e)
	restamp(b, 1<<40+7, -5)
	e.SCN, e.Timestamp = 1<<40+7, -5
	want, _ := event.AppendFrame(nil, &e)
	if !bytes.Equal(b, want) {
		t.Errorf("restamped frame\n%x\nwant\n%x", b, want)
	}
}
