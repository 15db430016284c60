package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/relay/buffer"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

func readPositionFile(t testing.TB, dir string) position {
	t.Helper()
	p, ok, err := readPosition(dir)
	if err != nil || !ok {
		t.Fatalf("position.json: ok=%v err=%v", ok, err)
	}
	return p
}

// held returns the frames of every window the relay holds, by SCN.
func held(r *Relay) map[uint64][]byte {
	in := r.Buffer().Info()
	ws, _ := r.Buffer().Read(in.LowWatermark, 1<<40, nil)
	defer buffer.Release(ws)
	out := map[uint64][]byte{}
	for _, w := range ws {
		out[w.SCN] = w.Data
		if w.Spill != nil {
			b, err := io.ReadAll(w.Spill.Reader())
			if err != nil {
				panic(err)
			}
			out[w.SCN] = b
		}
	}
	return out
}

func TestEvictionPersistsBeforeRelease(t *testing.T) {
	src := newMemSource(t)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	var mu sync.Mutex
	var violations []string
	released := 0
	src.onRelease = func(pos source.Position) {
		p, ok, err := readPosition(cfg.StateDir)
		mu.Lock()
		defer mu.Unlock()
		released++
		if err != nil || !ok || p.LowWatermark.SCN < pos.SCN || string(p.LowWatermark.Data) != string(pos.Data) {
			violations = append(violations, fmt.Sprintf("Release(%d %s) while position.json holds %+v (%v)", pos.SCN, pos.Data, p, err))
		}
	}
	last := src.add(400)
	h := startRelay(t, src, cfg)
	h.waitSCN(last)
	low := h.r.Buffer().Info().LowWatermark
	if low == 0 {
		t.Fatal("nothing was evicted")
	}
	waitFor(t, "the release of the low watermark", func() bool {
		_, rel, _, _ := src.stats()
		return len(rel) > 0 && rel[len(rel)-1].SCN == low
	})
	mu.Lock()
	if len(violations) > 0 {
		t.Errorf("Release before persisting:\n%s", strings.Join(violations, "\n"))
	}
	mu.Unlock()
	p := readPositionFile(t, cfg.StateDir)
	if p.LowWatermark.SCN != low || p.MaxSCN != last || string(p.LowWatermark.Data) != fmt.Sprintf(`{"off":%d}`, low*7) {
		t.Errorf("position.json = %+v; want low %d, max %d", p, low, last)
	}
	src.mu.Lock()
	if len(src.log) == 0 || src.log[0].SCN <= low {
		t.Errorf("the source did not prune up to %d", low)
	}
	src.mu.Unlock()

	// When position.json cannot be written, nothing more is released.
	if err := os.RemoveAll(cfg.StateDir); err != nil {
		t.Fatal(err)
	}
	_, rel, _, _ := src.stats()
	before := len(rel)
	last = src.add(50)
	h.waitSCN(last)
	waitFor(t, "a failed persist", func() bool { return h.metric("databus_relay_persist_errors_total") >= 2 })
	if _, rel, _, _ := src.stats(); len(rel) != before {
		t.Errorf("Release was called %d times while position.json could not be written", len(rel)-before)
	}
	if err := os.MkdirAll(cfg.StateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	low = h.r.Buffer().Info().LowWatermark
	waitFor(t, "the release after recovery", func() bool {
		_, rel, _, _ := src.stats()
		return rel[len(rel)-1].SCN == low
	})
	mu.Lock()
	defer mu.Unlock()
	if len(violations) > 0 {
		t.Errorf("Release before persisting:\n%s", strings.Join(violations, "\n"))
	}
}

func TestRestartRebuildsWindows(t *testing.T) {
	src := newMemSource(t)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	last := src.add(300)
	h1 := startRelay(t, src, cfg)
	h1.waitSCN(last)
	waitFor(t, "a release", func() bool { _, rel, _, _ := src.stats(); return len(rel) > 0 })
	before := held(h1.r)
	h1.stop()
	p := readPositionFile(t, cfg.StateDir)
	if p.MaxSCN != last || p.LowWatermark.SCN != h1.r.Buffer().Info().LowWatermark {
		t.Fatalf("position.json after stop = %+v; want max %d, low %d", p, last, h1.r.Buffer().Info().LowWatermark)
	}
	// The source may have pruned only what was released.
	_, rel, _, _ := src.stats()
	if got := rel[len(rel)-1].SCN; got > p.LowWatermark.SCN {
		t.Fatalf("released %d beyond the persisted low watermark %d", got, p.LowWatermark.SCN)
	}

	h2 := startRelay(t, src, cfg)
	h2.waitSCN(last)
	runs, _, _, _ := src.stats()
	if from := runs[len(runs)-1]; from.SCN != p.LowWatermark.SCN || string(from.Data) != string(p.LowWatermark.Data) {
		t.Errorf("the restarted relay ran the source from %+v, want %+v", from, p.LowWatermark)
	}
	after := held(h2.r)
	if len(after) != len(before) {
		t.Errorf("%d windows after the restart, %d before", len(after), len(before))
	}
	for scn, data := range before {
		if string(after[scn]) != string(data) {
			t.Errorf("window %d differs after the restart", scn)
		}
	}
	// A client that was behind resumes with no gap.
	ws := h2.readAll(p.LowWatermark.SCN)
	want := src.windowsAfter(p.LowWatermark.SCN)
	if len(ws) != len(want) {
		t.Fatalf("the client got %d windows, want %d", len(ws), len(want))
	}
	for i := range want {
		checkWindow(t, ws[i], want[i])
	}
	if resp, body := h2.stream("checkpoint", cp(p.LowWatermark.SCN-1), "wait", "0s"); resp.StatusCode != 410 {
		t.Errorf("below the persisted low watermark: %d %s", resp.StatusCode, body)
	}
	// Schemas seen before the restart are still known.
	if _, ok := h2.r.Registry().Get(2, 2); !ok {
		t.Error("db.order version 2 was not restored from schemas.json")
	}
}

func TestRestartGap(t *testing.T) {
	src := newMemSource(t)
	cfg := testConfig(t)
	last := src.add(10)
	h := startRelay(t, src, cfg)
	h.waitSCN(last)
	h.stop()
	// The source lost the newest windows: a restarted relay must say so.
	src.mu.Lock()
	src.log = src.log[:5]
	src.mu.Unlock()
	h2 := startRelay(t, src, cfg)
	h2.waitSCN(50)
	h2.r.mu.Lock()
	recapturing := h2.r.recapturing
	h2.r.mu.Unlock()
	if !recapturing {
		t.Fatal("the relay thinks it re-captured everything")
	}
	h2.r.checkRecapture(time.Now().Add(-time.Hour))
	if !strings.Contains(h2.logs.String(), "gap") {
		t.Errorf("no gap reported:\n%s", h2.logs.String())
	}
}

func TestCaptureRetry(t *testing.T) {
	for _, replay := range []bool{false, true} {
		t.Run(fmt.Sprintf("replay=%v", replay), func(t *testing.T) {
			src := newMemSource(t)
			src.openErr = []error{errors.New("connection refused")}
			src.failBefore(150, errors.New("connection reset"))
			var s source.Source = src
			if replay {
				s = replaying{src}
			}
			last := src.add(30)
			h := startRelaySource(t, src, s, testConfig(t))
			h.waitSCN(last)
			runs, _, opens, _ := src.stats()
			if opens != 2 || len(runs) != 2 {
				t.Fatalf("opens %d, runs %v", opens, runs)
			}
			if !replay && (runs[0].SCN != 0 || runs[1].SCN != 140 || string(runs[1].Data) != `{"off":980}`) {
				t.Errorf("runs from %+v; want 0 then the position after window 140", runs)
			}
			ws := h.readAll(0)
			want := src.windowsAfter(0)
			if len(ws) != len(want) {
				t.Fatalf("%d windows, want %d", len(ws), len(want))
			}
			for i := range want {
				checkWindow(t, ws[i], want[i])
			}
			dups := h.metric("databus_relay_windows_duplicate_total")
			if replay && dups != 14 || !replay && dups != 0 {
				t.Errorf("duplicates = %v", dups)
			}
			if got := h.metric("databus_relay_capture_errors_total"); got != 2 {
				t.Errorf("capture errors = %v, want 2", got)
			}
			if resp, body := h.get("/healthz"); resp.StatusCode != 200 {
				t.Errorf("healthz after recovery: %d %s", resp.StatusCode, body)
			}
		})
	}
}

// replaying is a source that ignores the position it is run from and
// replays everything it retains: the relay must not append twice.
type replaying struct{ *memSource }

func (s replaying) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	return s.memSource.Run(ctx, source.Position{}, emit)
}

// TestWindowTooLarge: a window larger than buffer.maxSpillBytes stops
// capture with an error naming the setting (a window merely larger than
// buffer.maxBytes is spilled: see TestSpilledWindow).
func TestWindowTooLarge(t *testing.T) {
	src := newMemSource(t)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	cfg.Buffer.MaxSpillBytes = 64 * KiB
	src.add(5)
	name := strings.Repeat("y", 70<<10)
	src.addWindow(source.Window{SCN: 100, Timestamp: 1, Position: source.Position{SCN: 100, Data: json.RawMessage(`{"off":700}`)},
		Events: []event.Event{{Kind: event.KindData, Op: event.OpInsert, SCN: 100, Source: 3, SchemaVersion: 1,
			Key: event.AppendKeyString(nil, "k"), Payload: src.encode(3, 1, map[string]any{"name": name, "count": int64(1)})}}})
	src.add(3) // after the big window: never captured, never skipped
	h := startRelay(t, src, cfg)
	waitFor(t, "capture to stop", func() bool { return h.metric("databus_relay_capture_stopped") == 1 })
	resp, body := h.get("/healthz")
	var hz health
	json.Unmarshal(body, &hz)
	if resp.StatusCode != 503 || hz.Status != "error" || hz.Retrying || !strings.Contains(hz.Error, "buffer.maxSpillBytes") || hz.MaxSCN != 50 {
		t.Errorf("healthz: %d %s", resp.StatusCode, body)
	}
	if !strings.Contains(h.logs.String(), "capture stopped") {
		t.Errorf("not logged:\n%s", h.logs.String())
	}
	time.Sleep(3 * cfg.ReleaseInterval)
	if got := h.r.Buffer().LastSCN(); got != 50 {
		t.Errorf("the relay captured up to %d past the window it could not hold", got)
	}
	if ws := h.readAll(0); len(ws) != 5 {
		t.Errorf("the relay serves %d windows, want the 5 before the big one", len(ws))
	}
	if runs, _, _, _ := src.stats(); len(runs) != 1 {
		t.Errorf("capture retried a permanent error: %d runs", len(runs))
	}
}

func TestStateFiles(t *testing.T) {
	dir := t.TempDir()
	p := position{LowWatermark: source.Position{SCN: 5, Data: json.RawMessage(`{"x":1}`)}, MaxSCN: 9}
	if err := writePosition(dir, p); err != nil {
		t.Fatal(err)
	}
	got := readPositionFile(t, dir)
	p.Version = stateVersion
	if d := cmp.Diff(p, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, "*.tmp-*")); len(m) != 0 {
		t.Errorf("temporary files left: %v", m)
	}
	for content, want := range map[string]string{
		`{"version":2,"lowWatermark":{"scn":1},"maxScn":1}`: "format version 2",
		`{"version":1,"lowWatermark":{"scn":5},"maxScn":1}`: "above maxScn",
		`{"version":1,`: "corrupt",
		`{"version":1,"lowWatermark":{"scn":1},"maxScn":1,"x":1}`: "corrupt",
	} {
		os.WriteFile(filepath.Join(dir, positionFile), []byte(content), 0o644)
		cfg := Config{StateDir: dir}
		_, err := New(cfg, newMemSource(t), nil, prometheus.NewRegistry())
		if !errors.Is(err, ErrState) || !strings.Contains(err.Error(), want) || !strings.Contains(err.Error(), positionFile) {
			t.Errorf("%s: New = %v, want an error about %q", content, err, want)
		}
	}
	os.Remove(filepath.Join(dir, positionFile))
	os.WriteFile(filepath.Join(dir, schemasFile), []byte(`{"version":3,"tables":[]}`), 0o644)
	if _, err := New(Config{StateDir: dir}, newMemSource(t), nil, nil); !errors.Is(err, ErrState) {
		t.Errorf("schemas.json of version 3: %v", err)
	}
}

func TestTableFromChange(t *testing.T) {
	for _, orig := range []schema.Table{orderV2, personV1, tagV1} {
		got, err := schema.FromChange(event.SchemaChange{Source: orig.ID, Name: orig.Name, Version: orig.Version, Key: orig.Key, Avro: orig.AvroSchema()})
		if err != nil {
			t.Fatal(err)
		}
		if d := cmp.Diff(string(orig.AvroSchema()), string(got.AvroSchema())); d != "" {
			t.Errorf("%s: Avro schema round trip (-want +got)\n%s", orig.Name, d)
		}
		if err := got.Validate(); err != nil {
			t.Error(err)
		}
	}
	if _, err := schema.FromChange(event.SchemaChange{Avro: json.RawMessage(`"long"`)}); err == nil {
		t.Error("a non-record schema was accepted")
	}
}

func TestArena(t *testing.T) {
	a := newArena(64 << 10) // 4 KiB chunks
	fill := func(n int, c byte) []byte {
		b := a.alloc(n)
		if len(b) != 0 || cap(b) < n {
			t.Fatalf("alloc(%d): len %d cap %d", n, len(b), cap(b))
		}
		for range n {
			b = append(b, c)
		}
		return b
	}
	x, y := fill(1000, 'x'), fill(1000, 'y')
	if !adjacent(x, y) {
		t.Error("consecutive windows of one chunk are not adjacent")
	}
	if run := x[:len(x)+len(y)]; string(run[1000:]) != string(y) || string(run[:1000]) != string(x) {
		t.Error("the merged run does not hold both windows")
	}
	z := fill(1000, 'z')
	big := fill(2000, 'b') // over a quarter chunk: its own allocation
	v := fill(1000, 'v')   // 4000 of 4096 bytes used
	w := fill(1000, 'w')   // does not fit the first chunk's rest: a new chunk
	if !adjacent(y, z) || !adjacent(z, v) || adjacent(z, big) || adjacent(big, v) || adjacent(v, w) || adjacent(nil, x) {
		t.Error("adjacency across chunks or allocations")
	}
	if string(x) != strings.Repeat("x", 1000) || string(y) != strings.Repeat("y", 1000) {
		t.Error("a later window overwrote an earlier one")
	}
}

func TestMarshalPosition(t *testing.T) {
	for _, p := range []source.Position{{}, {SCN: 42}, {SCN: 1 << 40, Data: []byte(`{"file":"binlog.000002","pos":4,"gtid":"0-1-9"}`)}} {
		got, err := marshalPosition(p)
		if err != nil {
			t.Fatal(err)
		}
		var back source.Position
		if err := json.Unmarshal(got, &back); err != nil || back.SCN != p.SCN || string(back.Data) != string(p.Data) {
			t.Errorf("marshalPosition(%+v) = %s, which reads back as %+v (%v)", p, got, back, err)
		}
	}
	if _, err := marshalPosition(source.Position{Data: []byte("{")}); err == nil {
		t.Error("invalid position data was accepted")
	}
}
