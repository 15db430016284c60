package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.uber.org/goleak"

	"github.com/databus-go/databus/checkpoint"
	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/source"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// syncBuffer is a log sink that tests read while the relay writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// harness is a running relay over a memSource, on a random loopback port.
type harness struct {
	t      testing.TB
	r      *Relay
	src    *memSource
	cfg    Config
	base   string
	client *http.Client
	logs   *syncBuffer
	cancel context.CancelFunc
	done   chan error
	once   sync.Once
}

// testConfig is a relay configuration for tests: a random port, a fresh
// state directory and a short release interval.
func testConfig(t testing.TB) Config {
	return Config{Listen: "127.0.0.1:0", StateDir: t.TempDir(), ReleaseInterval: 20 * time.Millisecond, Buffer: BufferConfig{MaxBytes: 4 * MiB}}
}

func startRelay(t testing.TB, src *memSource, cfg Config) *harness {
	t.Helper()
	return startRelaySource(t, src, src, cfg)
}

// startRelaySource runs a relay over s, a source built on src.
func startRelaySource(t testing.TB, src *memSource, s source.Source, cfg Config) *harness {
	t.Helper()
	logs := &syncBuffer{}
	log := slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	r, err := New(cfg, s, log, prometheus.NewRegistry())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	h := &harness{t: t, r: r, src: src, cfg: cfg, logs: logs, cancel: cancel, done: make(chan error, 1),
		client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 32}, Timeout: 30 * time.Second}}
	go func() { h.done <- r.Run(ctx) }()
	select {
	case <-r.ready:
	case err := <-h.done:
		t.Fatalf("Run: %v", err)
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not listen within 10s")
	}
	h.base = "http://" + r.Addr()
	t.Cleanup(h.stop)
	return h
}

// stop cancels Run and waits for it; the relay must stop cleanly.
func (h *harness) stop() {
	h.once.Do(func() {
		h.cancel()
		select {
		case err := <-h.done:
			if err != nil {
				h.t.Errorf("Run returned %v", err)
			}
		case <-time.After(15 * time.Second):
			h.t.Error("Run did not return within 15s of cancel")
		}
		h.client.CloseIdleConnections()
		if strings.Contains(h.logs.String(), "panic") {
			h.t.Errorf("the relay logged a panic:\n%s", h.logs.String())
		}
	})
}

func (h *harness) do(method, path string, hdr http.Header) (*http.Response, []byte) {
	h.t.Helper()
	req, err := http.NewRequest(method, h.base+path, nil)
	if err != nil {
		h.t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := h.client.Do(req)
	if err != nil {
		h.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		h.t.Fatalf("%s %s: reading the body: %v", method, path, err)
	}
	return resp, body
}

func (h *harness) get(path string) (*http.Response, []byte) { return h.do("GET", path, nil) }

// stream requests /v1/stream; params are name, value pairs.
func (h *harness) stream(params ...string) (*http.Response, []byte) {
	h.t.Helper()
	v := url.Values{}
	for i := 0; i+1 < len(params); i += 2 {
		v.Add(params[i], params[i+1])
	}
	return h.get("/v1/stream?" + v.Encode())
}

func cp(scn uint64) string { return checkpoint.At(scn).String() }

// waitFor polls cond until it holds or 10s pass.
func waitFor(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func (h *harness) waitSCN(scn uint64) {
	h.t.Helper()
	waitFor(h.t, "scn "+strconv.FormatUint(scn, 10)+" captured", func() bool { return h.r.Buffer().LastSCN() >= scn })
}

// metric returns the value of one series in /metrics, or -1.
func (h *harness) metric(series string) float64 {
	h.t.Helper()
	_, body := h.get("/metrics")
	re := regexp.MustCompile(`(?m)^` + regexp.QuoteMeta(series) + ` (\S+)$`)
	m := re.FindSubmatch(body)
	if m == nil {
		return -1
	}
	f, err := strconv.ParseFloat(string(m[1]), 64)
	if err != nil {
		h.t.Fatal(err)
	}
	return f
}

// apiErr decodes an error body.
func apiErr(t testing.TB, body []byte) apiError {
	t.Helper()
	var e struct {
		Error *apiError `json:"error"`
	}
	if err := json.Unmarshal(body, &e); err != nil || e.Error == nil {
		t.Fatalf("not a JSON error body: %q (%v)", body, err)
	}
	return *e.Error
}

// window is one decoded window of a stream response.
type window struct {
	scn    uint64
	events []event.Event // data and schema-change frames
	eow    event.Event
}

// parseWindows decodes a binary stream body into whole windows; a trailing
// partial window is an error.
func parseWindows(t testing.TB, body []byte) []window {
	t.Helper()
	var out []window
	var cur window
	for len(body) > 0 {
		e, n, err := event.Decode(body)
		if err != nil {
			t.Fatalf("decoding frame: %v", err)
		}
		body = body[n:]
		if e.Kind == event.KindEndOfWindow {
			cur.scn, cur.eow = e.SCN, e
			for _, x := range cur.events {
				if x.SCN != e.SCN {
					t.Fatalf("frame of scn %d inside window %d", x.SCN, e.SCN)
				}
			}
			out = append(out, cur)
			cur = window{}
			continue
		}
		cur.events = append(cur.events, e)
	}
	if len(cur.events) > 0 {
		t.Fatalf("response ends inside a window (%d frames after the last end of window)", len(cur.events))
	}
	return out
}

// readAll pages through /v1/stream from after until the relay's newest SCN,
// with extra parameters, and returns every window.
func (h *harness) readAll(after uint64, extra ...string) []window {
	h.t.Helper()
	newest := h.r.Buffer().LastSCN()
	var all []window
	for after < newest {
		resp, body := h.stream(append([]string{"checkpoint", cp(after), "wait", "0s"}, extra...)...)
		if resp.StatusCode != 200 {
			h.t.Fatalf("stream from %d: %d %s", after, resp.StatusCode, body)
		}
		ws := parseWindows(h.t, body)
		if len(ws) == 0 {
			h.t.Fatalf("stream from %d returned nothing, newest is %d", after, newest)
		}
		all = append(all, ws...)
		after = ws[len(ws)-1].scn
	}
	return all
}
