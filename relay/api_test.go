package relay

import (
	"encoding/json"
	"fmt"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/source"
)

func TestEndpoints(t *testing.T) {
	src := newMemSource(t)
	last := src.add(30)
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)

	t.Run("sources", func(t *testing.T) {
		resp, body := h.get("/v1/sources")
		var got []sourceJSON
		if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		want := []sourceJSON{{1, "db.person", 1, []string{"id"}}, {2, "db.order", 1, []string{"id"}}, {3, "db.tag", 1, []string{"name"}}}
		if d := cmp.Diff(want, got); d != "" {
			t.Errorf("(-want +got)\n%s", d)
		}
	})
	t.Run("schemas", func(t *testing.T) {
		for path, want := range map[string][]string{
			"/v1/schemas":           {"db.person", "db.order", "db.tag"},
			"/v1/schemas/db.tag":    {"db.tag"},
			"/v1/schemas/2":         {"db.order"},
			"/v1/schemas/db.person": {"db.person"},
		} {
			resp, body := h.get(path)
			var got []struct {
				ID      uint32            `json:"id"`
				Name    string            `json:"name"`
				Version uint16            `json:"version"`
				Key     []string          `json:"key"`
				Columns []json.RawMessage `json:"columns"`
				Avro    struct {
					Type   string            `json:"type"`
					Fields []json.RawMessage `json:"fields"`
				} `json:"avro"`
			}
			if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil {
				t.Fatalf("%s: %d %s", path, resp.StatusCode, body)
			}
			var names []string
			for _, s := range got {
				names = append(names, s.Name)
				if s.Version != 1 || len(s.Key) != 1 || len(s.Columns) == 0 || s.Avro.Type != "record" || len(s.Avro.Fields) != len(s.Columns) {
					t.Errorf("%s: incomplete schema %+v", path, s)
				}
			}
			if d := cmp.Diff(want, names); d != "" {
				t.Errorf("%s (-want +got)\n%s", path, d)
			}
		}
		resp, body := h.get("/v1/schemas/db.nope")
		if e := apiErr(t, body); resp.StatusCode != 404 || e.Code != codeUnknownSource || e.Source != "db.nope" {
			t.Errorf("unknown schema: %d %s", resp.StatusCode, body)
		}
	})
	t.Run("buffer", func(t *testing.T) {
		resp, body := h.get("/v1/buffer")
		var got bufferJSON
		if resp.StatusCode != 200 || json.Unmarshal(body, &got) != nil {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		if got.MinSCN != 10 || got.MaxSCN != last || got.LowWatermark != 0 || got.Windows != 30 || got.Bytes <= 0 ||
			got.MaxBytes != int64(4*MiB) || got.OldestTS == "" || got.NewestTS == "" {
			t.Errorf("buffer %+v", got)
		}
	})
	t.Run("healthz", func(t *testing.T) {
		resp, body := h.get("/healthz")
		if resp.StatusCode != 200 || string(body) != fmt.Sprintf(`{"status":"ok","maxScn":%d}`+"\n", last) {
			t.Errorf("%d %s", resp.StatusCode, body)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		for series, want := range map[string]float64{
			"databus_relay_windows_in_total": 30,
			"databus_relay_buffer_max_scn":   float64(last),
			"databus_relay_buffer_windows":   30,
			"databus_relay_capture_stopped":  0,
		} {
			if got := h.metric(series); got != want {
				t.Errorf("%s = %v, want %v", series, got, want)
			}
		}
		if got := h.metric("databus_relay_events_in_total"); got <= 0 {
			t.Errorf("events_in_total = %v", got)
		}
	})
	t.Run("status page", func(t *testing.T) {
		h.stream("checkpoint", cp(100), "wait", "0s", "client", "status-test")
		resp, body := h.get("/")
		if resp.StatusCode != 200 || !strings.HasPrefix(resp.Header.Get("Content-Type"), "text/html") {
			t.Fatalf("%d %s", resp.StatusCode, resp.Header.Get("Content-Type"))
		}
		for _, s := range []string{"db.person", "db.tag", fmt.Sprint(last), "status-test", "<td>100</td>"} {
			if !strings.Contains(string(body), s) {
				t.Errorf("status page lacks %q:\n%s", s, body)
			}
		}
	})
	t.Run("not found and method", func(t *testing.T) {
		for _, path := range []string{"/nope", "/v1/nope", "/v1/schemas/a/b", "/v1"} {
			resp, body := h.get(path)
			if e := apiErr(t, body); resp.StatusCode != 404 || e.Code != codeNotFound || resp.Header.Get("Content-Type") != "application/json" {
				t.Errorf("%s: %d %s", path, resp.StatusCode, body)
			}
		}
		for _, path := range []string{"/v1/sources", "/v1/stream", "/healthz", "/"} {
			resp, body := h.do("POST", path, nil)
			if e := apiErr(t, body); resp.StatusCode != 405 || e.Code != codeMethodNotAllowed || resp.Header.Get("Allow") == "" {
				t.Errorf("POST %s: %d %s", path, resp.StatusCode, body)
			}
		}
	})
}

// checkWindow compares a served window with the source's.
func checkWindow(t *testing.T, got window, want source.Window) {
	t.Helper()
	if got.scn != want.SCN {
		t.Fatalf("window scn %d, want %d", got.scn, want.SCN)
	}
	type ev struct {
		Kind          event.Kind
		Op            event.Op
		Source        uint32
		SchemaVersion uint16
		Key, Payload  []byte
		Before        []byte
		HasBefore     bool
	}
	conv := func(es []event.Event) []ev {
		var out []ev
		for _, e := range es {
			out = append(out, ev{e.Kind, e.Op, e.Source, e.SchemaVersion, e.Key, e.Payload, e.Before, e.HasBefore})
		}
		return out
	}
	if d := cmp.Diff(conv(want.Events), conv(got.events), cmpopts.EquateEmpty()); d != "" {
		t.Fatalf("window %d events (-want +got)\n%s", want.SCN, d)
	}
	count, txid, _ := got.eow.WindowInfo()
	data := 0
	for _, e := range want.Events {
		if e.Kind == event.KindData {
			data++
		}
	}
	if int(count) != data || txid != want.TxID || got.eow.Timestamp != want.Timestamp {
		t.Fatalf("window %d end: count %d txid %q ts %d, want %d %q %d", want.SCN, count, txid, got.eow.Timestamp, data, want.TxID, want.Timestamp)
	}
}

func TestStreamFromStart(t *testing.T) {
	src := newMemSource(t)
	last := src.add(60)
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)
	want := src.windowsAfter(0)

	resp, body := h.stream("checkpoint", cp(0), "maxBytes", "67108864", "wait", "0s")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ContentTypeFrames ||
		resp.Header.Get(HeaderMaxSCN) != fmt.Sprint(last) || resp.Header.Get(HeaderOldestSCN) != "10" ||
		resp.Header.Get("Content-Length") != fmt.Sprint(len(body)) {
		t.Fatalf("%d %v", resp.StatusCode, resp.Header)
	}
	got := parseWindows(t, body)
	if len(got) != len(want) {
		t.Fatalf("%d windows, want %d", len(got), len(want))
	}
	for i := range want {
		checkWindow(t, got[i], want[i])
	}
	// Paging with the default budget yields the same windows.
	paged := h.readAll(0)
	if len(paged) != len(want) {
		t.Fatalf("paging: %d windows, want %d", len(paged), len(want))
	}
	for i := range want {
		checkWindow(t, paged[i], want[i])
	}
	// From the middle: strictly after the checkpoint.
	_, body = h.stream("checkpoint", cp(295), "wait", "0s")
	if ws := parseWindows(t, body); len(ws) == 0 || ws[0].scn != 300 {
		t.Errorf("from 295: first window %v", ws)
	}
}

func TestLongPoll(t *testing.T) {
	src := newMemSource(t)
	last := src.add(5)
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)

	type result struct {
		status  int
		body    []byte
		elapsed time.Duration
	}
	done := make(chan result, 1)
	start := time.Now()
	go func() {
		resp, body := h.stream("checkpoint", cp(last), "wait", "20s")
		done <- result{resp.StatusCode, body, time.Since(start)}
	}()
	waitFor(t, "the long poll to be in flight", func() bool { return h.metric("databus_relay_clients_connected") == 1 })
	time.Sleep(50 * time.Millisecond) // most likely waiting now; correct either way
	next := src.add(1)
	res := <-done
	ws := parseWindows(t, res.body)
	if res.status != 200 || len(ws) != 1 || ws[0].scn != next {
		t.Fatalf("long poll: %d, windows %v", res.status, ws)
	}
	if res.elapsed > 10*time.Second {
		t.Errorf("the long poll took %v; it should return when the window arrives", res.elapsed)
	}

	start = time.Now()
	resp, body := h.stream("checkpoint", cp(next), "wait", "200ms")
	if el := time.Since(start); resp.StatusCode != 200 || len(body) != 0 || el < 200*time.Millisecond {
		t.Errorf("empty long poll: %d %q after %v", resp.StatusCode, body, el)
	}
	resp, body = h.stream("checkpoint", cp(next), "wait", "0s")
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get(HeaderMaxSCN) != fmt.Sprint(next) {
		t.Errorf("wait=0 when caught up: %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

func TestShutdownEndsLongPoll(t *testing.T) {
	src := newMemSource(t)
	h := startRelay(t, src, testConfig(t))
	done := make(chan *http.Response, 1)
	go func() {
		resp, _ := h.stream("checkpoint", cp(0), "wait", "60s")
		done <- resp
	}()
	waitFor(t, "the long poll to be in flight", func() bool { return h.metric("databus_relay_clients_connected") == 1 })
	start := time.Now()
	h.stop()
	resp := <-done
	if resp.StatusCode != http.StatusServiceUnavailable || time.Since(start) > 5*time.Second {
		t.Errorf("long poll at shutdown: %d after %v", resp.StatusCode, time.Since(start))
	}
	if _, _, _, closes := src.stats(); closes != 1 {
		t.Errorf("source closed %d times, want 1", closes)
	}
}

func TestMaxBytesBudget(t *testing.T) {
	src := newMemSource(t)
	src.add(40)
	big := source.Window{SCN: 1000, Timestamp: 1, Position: source.Position{SCN: 1000, Data: json.RawMessage(`{"off":7000}`)}}
	name := strings.Repeat("x", 5000)
	big.Events = []event.Event{{Kind: event.KindData, Op: event.OpInsert, SCN: 1000, Source: 3, SchemaVersion: 1,
		Key: event.AppendKeyString(nil, name), Payload: src.encode(3, 1, map[string]any{"name": name, "count": int64(1)})}}
	src.addWindow(big)
	last := src.add(5)
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)

	for _, extra := range [][]string{nil, {"sources", "db.person,db.tag"}, {"format", "json"}} {
		name := fmt.Sprint(extra)
		var after uint64
		several := false
		for after < 400 {
			resp, body := h.stream(append([]string{"checkpoint", cp(after), "maxBytes", "1024", "wait", "0s"}, extra...)...)
			if resp.StatusCode != 200 {
				t.Fatalf("%s: %d %s", name, resp.StatusCode, body)
			}
			n := 0
			if len(extra) > 0 && extra[0] == "format" {
				n = strings.Count(string(body), `"endOfWindow":true`)
				var last struct{ SCN uint64 }
				lines := strings.Split(strings.TrimSpace(string(body)), "\n")
				json.Unmarshal([]byte(lines[len(lines)-1]), &last)
				after = last.SCN
			} else {
				ws := parseWindows(t, body)
				n = len(ws)
				after = ws[len(ws)-1].scn
			}
			if n > 1 && len(body) > 1024 {
				t.Fatalf("%s: %d windows in %d bytes, over the budget of 1024", name, n, len(body))
			}
			several = several || n > 1
		}
		if !several {
			t.Errorf("%s: no response carried several windows", name)
		}
		// The oversize window comes alone.
		resp, body := h.stream(append([]string{"checkpoint", cp(400), "maxBytes", "1024", "wait", "0s"}, extra...)...)
		if len(extra) > 0 && extra[0] == "format" {
			if resp.StatusCode != 200 || strings.Count(string(body), `"endOfWindow":true`) != 1 || !strings.Contains(string(body), `"scn":1000,"endOfWindow"`) || len(body) < 5000 {
				t.Errorf("%s: oversize window: %d %d bytes", name, resp.StatusCode, len(body))
			}
			continue
		}
		ws := parseWindows(t, body)
		if resp.StatusCode != 200 || len(ws) != 1 || ws[0].scn != 1000 || len(body) < 5000 {
			t.Errorf("%s: oversize window: %d, %d windows, %d bytes", name, resp.StatusCode, len(ws), len(body))
		}
	}
}

func TestFilters(t *testing.T) {
	src := newMemSource(t)
	last := src.add(80)
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)
	history := src.windowsAfter(0)

	type id struct {
		scn uint64
		key string
	}
	want := func(sources ...uint32) map[id]bool {
		m := map[id]bool{}
		for _, w := range history {
			for _, e := range w.Events {
				for _, s := range sources {
					if e.Kind == event.KindData && e.Source == s {
						m[id{w.SCN, string(e.Key)}] = true
					}
				}
			}
		}
		return m
	}
	cases := []struct {
		name    string
		sources string
		parts   []string
		want    map[id]bool
	}{
		{"mod over all sources", "", []string{"mod:0/4", "mod:1/4", "mod:2/4", "mod:3/4"}, want(1, 2, 3)},
		{"mod over int-key sources", "db.person,db.order", []string{"mod:0/4", "mod:1/4", "mod:2/4", "mod:3/4"}, want(1, 2)},
		{"mod buckets sets", "db.tag", []string{"mod:0,2/4", "mod:1,3/4"}, want(3)},
		{"range", "db.order,db.person", []string{"range:-1000000-0", "range:0-1000000"}, want(1, 2)},
		{"sources only", "db.order", []string{""}, want(2)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			seen := map[id]int{}
			for _, p := range c.parts {
				var extra []string
				if c.sources != "" {
					extra = append(extra, "sources", c.sources)
				}
				if p != "" {
					extra = append(extra, "partition", p)
				}
				ws := h.readAll(0, append(extra, "maxBytes", "2048")...)
				if len(ws) != len(history) {
					t.Fatalf("%s: %d windows (end-of-window frames), want %d", p, len(ws), len(history))
				}
				for i, w := range ws {
					if w.scn != history[i].SCN {
						t.Fatalf("%s: window %d has scn %d, want %d", p, i, w.scn, history[i].SCN)
					}
					for _, e := range w.events {
						if e.Kind == event.KindData {
							seen[id{w.scn, string(e.Key)}]++
						}
					}
				}
			}
			for k := range c.want {
				if seen[k] != 1 {
					t.Errorf("event %v seen %d times, want once", k, seen[k])
				}
			}
			for k := range seen {
				if !c.want[k] {
					t.Errorf("event %v should have been filtered out", k)
				}
			}
		})
	}
	// Schema-change frames pass every filter.
	src.add(25) // through scn 1050, past the schema change at 500
	h.waitSCN(1050)
	ws := h.readAll(490, "sources", "db.tag", "partition", "mod:0/8")
	found := false
	for _, w := range ws {
		for _, e := range w.events {
			found = found || e.Kind == event.KindSchemaChange
		}
	}
	if !found {
		t.Error("the schema-change frame was filtered out")
	}
}

func TestRangeNeedsIntegerKey(t *testing.T) {
	src := newMemSource(t)
	last := src.add(3)
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)
	for _, sources := range []string{"", "db.tag", "db.person,db.tag"} {
		params := []string{"checkpoint", cp(0), "partition", "range:0-10", "wait", "0s"}
		if sources != "" {
			params = append(params, "sources", sources)
		}
		resp, body := h.stream(params...)
		if e := apiErr(t, body); resp.StatusCode != 400 || e.Code != codeBadPartition || e.Parameter != "partition" || e.Source != "db.tag" {
			t.Errorf("sources %q: %d %s", sources, resp.StatusCode, body)
		}
	}
	resp, body := h.stream("checkpoint", cp(0), "partition", "range:0-10", "sources", "db.person,db.order", "wait", "0s")
	if resp.StatusCode != 200 {
		t.Errorf("range over integer keys: %d %s", resp.StatusCode, body)
	}
}

func TestBadParameters(t *testing.T) {
	src := newMemSource(t)
	h := startRelay(t, src, testConfig(t))
	waitFor(t, "the source to open", h.r.isOpened)
	ok := cp(0)
	cases := []struct {
		query, code, param string
	}{
		{"", codeBadCheckpoint, "checkpoint"},
		{"checkpoint=x", codeBadCheckpoint, "checkpoint"},
		{"checkpoint=" + `{"v":1,"mode":"online","scn":-1}`, codeBadCheckpoint, "checkpoint"},
		{"checkpoint=" + `{"v":1,"mode":"bootstrap_snapshot","scn":0,"bootstrap":{"startScn":1,"targetScn":2}}`, codeBadCheckpoint, "checkpoint"},
		{"checkpoint=" + ok + "&maxBytes=x", codeBadParameter, "maxBytes"},
		{"checkpoint=" + ok + "&maxBytes=1023", codeBadParameter, "maxBytes"},
		{"checkpoint=" + ok + "&maxBytes=67108865", codeBadParameter, "maxBytes"},
		{"checkpoint=" + ok + "&maxBytes=99999999999999999999", codeBadParameter, "maxBytes"},
		{"checkpoint=" + ok + "&wait=5", codeBadParameter, "wait"},
		{"checkpoint=" + ok + "&wait=-1s", codeBadParameter, "wait"},
		{"checkpoint=" + ok + "&wait=61s", codeBadParameter, "wait"},
		{"checkpoint=" + ok + "&format=xml", codeBadParameter, "format"},
		{"checkpoint=" + ok + "&format=", codeBadParameter, "format"},
		{"checkpoint=" + ok + "&client=a%20b", codeBadParameter, "client"},
		{"checkpoint=" + ok + "&client=", codeBadParameter, "client"},
		{"checkpoint=" + ok + "&client=" + strings.Repeat("c", 65), codeBadParameter, "client"},
		{"checkpoint=" + ok + "&sources=", codeBadParameter, "sources"},
		{"checkpoint=" + ok + "&sources=db.person,,db.tag", codeBadParameter, "sources"},
		{"checkpoint=" + ok + "&sources=db.nope", codeUnknownSource, "sources"},
		{"checkpoint=" + ok + "&partition=mod:4/4", codeBadPartition, "partition"},
		{"checkpoint=" + ok + "&partition=hash:1/2", codeBadPartition, "partition"},
		{"checkpoint=" + ok + "&partition=", codeBadPartition, "partition"},
		{"checkpoint=" + ok + "&partion=mod:1/2", codeBadParameter, "partion"},
		{"checkpoint=" + ok + "&checkpoint=" + ok, codeBadParameter, "checkpoint"},
		{"checkpoint=" + ok + "&wait=%zz", codeBadParameter, "query"},
	}
	for _, c := range cases {
		t.Run(c.query, func(t *testing.T) {
			q := c.query
			if strings.HasPrefix(q, "checkpoint=") && !strings.Contains(q, "%zz") {
				// Escape the JSON checkpoints, keep the rest as written.
				name, rest, _ := strings.Cut(q[len("checkpoint="):], "&")
				q = "checkpoint=" + urlEscape(name)
				if rest != "" {
					q += "&" + rest
				}
			}
			resp, body := h.get("/v1/stream?" + q)
			e := apiErr(t, body)
			if resp.StatusCode != 400 || e.Code != c.code || e.Parameter != c.param || e.Message == "" {
				t.Errorf("%d %s; want 400 %s naming %s", resp.StatusCode, body, c.code, c.param)
			}
		})
	}
}

func urlEscape(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

func TestSCNNotHeld(t *testing.T) {
	src := newMemSource(t)
	last := src.add(400)
	cfg := testConfig(t)
	cfg.Buffer.MaxBytes = 64 * KiB
	h := startRelay(t, src, cfg)
	h.waitSCN(last)
	in := h.r.Buffer().Info()
	if in.LowWatermark == 0 {
		t.Fatal("nothing was evicted; the test needs a smaller buffer or more windows")
	}
	for _, scn := range []uint64{0, in.LowWatermark - 1} {
		resp, body := h.stream("checkpoint", cp(scn), "wait", "0s")
		e := apiErr(t, body)
		if resp.StatusCode != http.StatusGone || e.Code != codeSCNNotHeld || e.OldestSCN == nil || e.LowWatermark == nil {
			t.Fatalf("%d %s", resp.StatusCode, body)
		}
		now := h.r.Buffer().Info() // capture is done: nothing moves
		if *e.OldestSCN != now.MinSCN || *e.LowWatermark != now.LowWatermark || !strings.Contains(string(body), `"oldestScn":`) {
			t.Errorf("410 body %s; buffer min %d low %d", body, now.MinSCN, now.LowWatermark)
		}
	}
	resp, body := h.stream("checkpoint", cp(in.LowWatermark), "wait", "0s")
	if ws := parseWindows(t, body); resp.StatusCode != 200 || len(ws) == 0 || ws[0].scn != in.MinSCN {
		t.Errorf("from the low watermark: %d %v", resp.StatusCode, ws)
	}
}

func TestFormatJSON(t *testing.T) {
	src := newMemSource(t)
	last := src.add(52) // scn 10..520, db.order changes to version 2 at 500
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)

	resp, body := h.stream("checkpoint", cp(470), "format", "json", "wait", "0s", "maxBytes", "67108864")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != ContentTypeNDJSON {
		t.Fatalf("%d %v %s", resp.StatusCode, resp.Header, body)
	}
	var got []map[string]any
	for _, line := range strings.Split(strings.TrimSuffix(string(body), "\n"), "\n") {
		var m map[string]any
		if err := json.Unmarshal([]byte(line), &m); err != nil {
			t.Fatalf("line %q: %v", line, err)
		}
		got = append(got, m)
	}
	var want []map[string]any
	names := map[uint32]string{1: "db.person", 2: "db.order", 3: "db.tag"}
	keyCol := map[uint32]string{1: "id", 2: "id", 3: "name"}
	for _, w := range src.windowsAfter(470) {
		ts := time.Unix(0, w.Timestamp).UTC().Format(time.RFC3339Nano)
		n := 0
		for _, e := range w.Events {
			if e.Kind == event.KindSchemaChange {
				var sc map[string]any
				json.Unmarshal(e.Payload, &sc)
				want = append(want, map[string]any{"scn": float64(w.SCN), "schemaChange": sc})
				continue
			}
			n++
			k, _ := event.DecodeKey(e.Key)
			kv := k[0]
			if i, ok := kv.(int64); ok {
				kv = float64(i)
			}
			m := map[string]any{"scn": float64(w.SCN), "source": names[e.Source], "op": e.Op.String(),
				"key": map[string]any{keyCol[e.Source]: kv}, "ts": ts, "schemaVersion": float64(e.SchemaVersion)}
			if e.Op != event.OpDelete {
				m["row"] = expectRow(t, src, &e, e.Payload)
			}
			if e.HasBefore {
				m["before"] = expectRow(t, src, &e, e.Before)
			}
			want = append(want, m)
		}
		want = append(want, map[string]any{"scn": float64(w.SCN), "endOfWindow": true, "ts": ts, "events": float64(n), "txid": w.TxID})
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("(-want +got)\n%s", d)
	}
	if !strings.Contains(string(body), `"note":"n"`) || !strings.Contains(string(body), `"amount":"`) {
		t.Errorf("version-2 rows or decimals are missing:\n%s", body)
	}
}

// expectRow decodes a row image with the source's own codec and renders it
// as the protocol says: decimals as exact strings, numbers as JSON numbers.
func expectRow(t *testing.T, src *memSource, e *event.Event, img []byte) map[string]any {
	row, err := src.codecs[[2]uint32{e.Source, uint32(e.SchemaVersion)}].Decode(img)
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]any{}
	for k, v := range row {
		switch x := v.(type) {
		case int64:
			out[k] = float64(x)
		case *big.Rat:
			out[k] = x.FloatString(2)
		default:
			out[k] = x
		}
	}
	return out
}

func TestAuth(t *testing.T) {
	src := newMemSource(t)
	cfg := testConfig(t)
	cfg.AuthToken = "s3cret-token"
	h := startRelay(t, src, cfg)
	for _, hdr := range []http.Header{nil, {"Authorization": {"Bearer wrong"}}, {"Authorization": {"s3cret-token"}}, {"Authorization": {"Basic s3cret-token"}}} {
		for _, path := range []string{"/v1/sources", "/v1/stream?checkpoint=x", "/v1/nope"} {
			resp, body := h.do("GET", path, hdr)
			if e := apiErr(t, body); resp.StatusCode != 401 || e.Code != codeUnauthorized || resp.Header.Get("WWW-Authenticate") == "" {
				t.Errorf("%s with %v: %d %s", path, hdr, resp.StatusCode, body)
			}
		}
	}
	good := http.Header{"Authorization": {"Bearer s3cret-token"}}
	if resp, body := h.do("GET", "/v1/sources", good); resp.StatusCode != 200 {
		t.Errorf("with the token: %d %s", resp.StatusCode, body)
	}
	if resp, _ := h.do("GET", "/v1/nope", good); resp.StatusCode != 404 {
		t.Errorf("unknown path with the token: %d", resp.StatusCode)
	}
	waitFor(t, "the source to open", func() bool { _, ok := h.r.health(); return ok })
	if resp, _ := h.get("/healthz"); resp.StatusCode != 200 {
		t.Errorf("/healthz needs no token, got %d", resp.StatusCode)
	}
	if strings.Contains(h.logs.String(), "s3cret-token") {
		t.Error("the token was logged")
	}
}

func TestClientLag(t *testing.T) {
	src := newMemSource(t)
	last := src.add(20)
	h := startRelay(t, src, testConfig(t))
	h.waitSCN(last)
	h.stream("checkpoint", cp(50), "wait", "0s", "client", "lagger")
	h.stream("checkpoint", cp(last), "wait", "0s")
	w50, _ := src.window(50)
	wLast, _ := src.window(last)
	for series, want := range map[string]float64{
		`databus_relay_client_lag_scn{client="lagger"}`:        float64(last - 50),
		`databus_relay_client_lag_seconds{client="lagger"}`:    float64(wLast.Timestamp-w50.Timestamp) / 1e9,
		`databus_relay_client_lag_scn{client="127.0.0.1"}`:     0,
		`databus_relay_client_lag_seconds{client="127.0.0.1"}`: 0,
	} {
		if got := h.metric(series); got != want {
			t.Errorf("%s = %v, want %v", series, got, want)
		}
	}
	h.r.clients.expire(time.Now().Add(clientIdle + time.Second))
	if got := h.metric(`databus_relay_client_lag_scn{client="lagger"}`); got != -1 {
		t.Errorf("an idle client's series survived expiry: %v", got)
	}
	if n := len(h.r.clients.snapshot()); n != 0 {
		t.Errorf("%d clients left after expiry", n)
	}
	// Cardinality stays bounded.
	var wg sync.WaitGroup
	c := newClients(h.r.m)
	for i := range maxClients + 50 {
		wg.Go(func() {
			id := c.begin(fmt.Sprint("c", i), "r", time.Now())
			c.lag(id, 1, 1, 1)
			c.end(id, time.Now())
		})
	}
	wg.Wait()
	if n := len(c.snapshot()); n != maxClients+1 {
		t.Errorf("%d clients tracked, want %d", n, maxClients+1)
	}
}

func TestStartingSource(t *testing.T) {
	src := newMemSource(t)
	src.openGate = make(chan struct{})
	h := startRelay(t, src, testConfig(t))
	resp, body := h.get("/healthz")
	if resp.StatusCode != 503 || !strings.Contains(string(body), `"status":"starting"`) {
		t.Errorf("healthz before open: %d %s", resp.StatusCode, body)
	}
	// Not yet known is not "unknown": the client must retry, not give up.
	for _, params := range [][]string{{"sources", "db.tag"}, {"sources", "db.tag", "partition", "range:0-5"}} {
		resp, body = h.stream(append([]string{"checkpoint", cp(0), "wait", "0s"}, params...)...)
		if e := apiErr(t, body); resp.StatusCode != 503 || e.Code != codeUnavailable {
			t.Errorf("%v before open: %d %s", params, resp.StatusCode, body)
		}
	}
	// Syntax errors are still 400s.
	if resp, body := h.stream("checkpoint", cp(0), "wait", "x"); resp.StatusCode != 400 {
		t.Errorf("bad wait before open: %d %s", resp.StatusCode, body)
	}
	select {
	case <-h.r.Ready():
		t.Fatal("Ready before the source opened")
	default:
	}
	close(src.openGate)
	<-h.r.Ready()
	if resp, body := h.get("/healthz"); resp.StatusCode != 200 {
		t.Errorf("healthz once ready: %d %s", resp.StatusCode, body)
	}
	if resp, body := h.stream("checkpoint", cp(0), "wait", "0s", "sources", "db.tag"); resp.StatusCode != 200 {
		t.Errorf("after open: %d %s", resp.StatusCode, body)
	}
	if resp, body := h.stream("checkpoint", cp(0), "wait", "0s", "sources", "db.nope"); resp.StatusCode != 400 {
		t.Errorf("unknown source after open: %d %s", resp.StatusCode, body)
	}
}
