package e2e

import (
	"context"
	"database/sql"
	"encoding/json"
	"fmt"
	"maps"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"
)

// TestBootstrapConfigErrors: every way the bootstrap section can be wrong
// is refused by `bootstrap` and `bootstrap --check-config` alike, with a
// non-zero exit and one stderr line naming the field.
func TestBootstrapConfigErrors(t *testing.T) {
	dbPath, _ := newDB(t)
	const relay = "relay:\n  listen: 127.0.0.1:1\n  stateDir: {{dir}}/state\n"
	const src = "source:\n  sqlite:\n    path: {{db}}\n    tables: [acct, tag]\n"
	const store = "  store:\n    sqlite: {path: {{dir}}/b.db}\n"
	cases := []struct {
		name string
		yaml string
		want []string
	}{
		{name: "no bootstrap section", yaml: relay + src, want: []string{"{{cfg}}", "bootstrap"}},
		{name: "no store", yaml: relay + "bootstrap:\n  server: {listen: 127.0.0.1:0}\n", want: []string{"{{cfg}}", "bootstrap.store"}},
		{name: "two stores", yaml: relay + "bootstrap:\n  store:\n    sqlite: {path: x.db}\n    postgres: {connString: postgres://x}\n", want: []string{"{{cfg}}", "bootstrap.store"}},
		{name: "sqlite store without path", yaml: relay + "bootstrap:\n  store:\n    sqlite: {}\n", want: []string{"{{cfg}}", "bootstrap.store.sqlite.path"}},
		{name: "unknown key", yaml: relay + "bootstrap:\n  stroe: {}\n" + store, want: []string{"{{cfg}}", "stroe"}},
		{name: "bad server listen", yaml: relay + "bootstrap:\n  server: {listen: nowhere}\n" + store, want: []string{"{{cfg}}", "bootstrap.server", "nowhere"}},
		{name: "no relay to follow", yaml: "bootstrap:\n" + store, want: []string{"{{cfg}}", "bootstrap.producer", "relays"}},
		{name: "bad relay URL", yaml: "bootstrap:\n  producer: {relays: [\"ftp://x\"]}\n" + store, want: []string{"{{cfg}}", "bootstrap.producer", "ftp://x"}},
		{name: "seed without a source", yaml: relay + "bootstrap:\n  producer:\n    seed: {tables: [shop.orders]}\n" + store, want: []string{"{{cfg}}", "seed.tables", "source"}},
		{name: "seed of a sqlite source", yaml: relay + src + "bootstrap:\n  producer:\n    seed: {tables: [main.acct]}\n" + store, want: []string{"{{cfg}}", "seed.tables", "sqlite"}},
	}
	for _, c := range cases {
		for _, check := range []bool{false, true} {
			name := c.name + "/run"
			if check {
				name = c.name + "/check-config"
			}
			t.Run(name, func(t *testing.T) {
				t.Parallel()
				dir := t.TempDir()
				cfg := filepath.Join(dir, "databus.yaml")
				fill := strings.NewReplacer("{{dir}}", dir, "{{db}}", dbPath, "{{cfg}}", cfg).Replace
				if err := os.WriteFile(cfg, []byte(fill(c.yaml)), 0o644); err != nil {
					t.Fatal(err)
				}
				args := []string{"bootstrap", "--config", cfg}
				if check {
					args = append(args, "--check-config")
				}
				var want []string
				for _, w := range c.want {
					want = append(want, fill(w))
				}
				r := runCLI(t, 10*time.Second, nil, args...)
				if problem := oneLineProblem(r, want...); problem != "" {
					t.Error(problem)
				}
				if _, err := os.Stat(filepath.Join(dir, "b.db")); err == nil {
					t.Error("the refused configuration created the bootstrap store")
				}
			})
		}
	}
}

// TestBootstrapCLI runs `databus relay` and `databus bootstrap` from one
// configuration file, writes far more than the relay's buffer holds, and
// checks that `databus tail --from-start --bootstrap` prints the full
// history, with progress lines, and that the rows it printed are the
// source's.
func TestBootstrapCLI(t *testing.T) {
	dbPath, db := newDB(t)
	dir := t.TempDir()
	relayAddr, bootAddr := freeAddr(t), freeAddr(t)
	cfg := filepath.Join(dir, "databus.yaml")
	yaml := fmt.Sprintf(`relay:
  listen: %s
  stateDir: %s
  buffer: {maxBytes: 64KiB}
source:
  sqlite:
    path: %s
    tables: [acct, tag]
    pollInterval: 10ms
bootstrap:
  server: {listen: %s}
  store:
    sqlite: {path: %s}
`, relayAddr, filepath.Join(dir, "state"), dbPath, bootAddr, filepath.Join(dir, "bootstrap.db"))
	if err := os.WriteFile(cfg, []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, 10*time.Second, nil, "bootstrap", "--config", cfg, "--check-config"); r.code != 0 || !strings.Contains(strings.Join(r.stdout, "\n"), "valid") {
		t.Fatalf("--check-config: %v %q", r, r.stdout)
	}
	relay := startCLI(t, 90*time.Second, nil, "relay", "--config", cfg)
	boot := startCLI(t, 90*time.Second, nil, "bootstrap", "--config", cfg)
	waitFor(t, 20*time.Second, "the bootstrap server", func() bool { return httpOK("http://" + bootAddr + "/healthz") })

	// Seeding is not configured: asking for a seed is one clear line.
	r := runCLI(t, 10*time.Second, nil, "bootstrap", "seed", "--server", "http://"+bootAddr, "--table", "main.acct")
	if problem := oneLineProblem(r, "seed"); problem != "" {
		t.Error(problem)
	}

	w := newWriter(db, 77)
	if err := w.run(context.Background(), 1500); err != nil {
		t.Fatal(err)
	}
	want := acctTxns(t, db)
	tail := startCLI(t, 60*time.Second, nil, "tail", "--relay", "http://"+relayAddr, "--bootstrap", "http://"+bootAddr,
		"--from-start", "--sources", "main.acct", "--windows=false")
	var got map[string]string
	tail.waitOutput(t, 40*time.Second, "tail to print the source's acct rows", func(lines []string) bool {
		got = foldTail(t, lines)
		return maps.Equal(got, want)
	})
	tr := tail.interrupt()
	if tr.code != 0 {
		t.Errorf("tail: %v", tr)
	}
	if !regexp.MustCompile(`(?m)^bootstrap: done: \d+ snapshot rows`).MatchString(tr.stderr) {
		t.Errorf("tail printed no bootstrap summary line; stderr:\n%s", tr.stderr)
	}
	for _, p := range []*cliProc{boot, relay} {
		if r := p.interrupt(); r.code != 0 {
			t.Errorf("Ctrl-C is not a clean exit: %v", r)
		}
	}
}

// acctTxns is the source's acct table as id → txn.
func acctTxns(t *testing.T, db *sql.DB) map[string]string {
	t.Helper()
	rows, err := db.Query(`SELECT id, txn FROM acct`)
	if err != nil {
		t.Fatal(err)
	}
	defer rows.Close()
	out := map[string]string{}
	for rows.Next() {
		var id, txn int64
		if err := rows.Scan(&id, &txn); err != nil {
			t.Fatal(err)
		}
		out[fmt.Sprint(id)] = fmt.Sprint(txn)
	}
	if err := rows.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// foldTail applies tail's JSON lines of main.acct in order: id → txn.
func foldTail(t *testing.T, lines []string) map[string]string {
	t.Helper()
	out := map[string]string{}
	for _, line := range lines {
		var e struct {
			Source string `json:"source"`
			Op     string `json:"op"`
			Key    struct {
				ID json.Number `json:"id"`
			} `json:"key"`
			Row struct {
				Txn json.Number `json:"txn"`
			} `json:"row"`
		}
		if err := json.Unmarshal([]byte(line), &e); err != nil {
			t.Fatalf("tail line %q: %v", line, err)
		}
		if e.Source != "main.acct" {
			continue
		}
		if e.Op == "delete" {
			delete(out, e.Key.ID.String())
			continue
		}
		out[e.Key.ID.String()] = e.Row.Txn.String()
	}
	return out
}

// httpOK reports whether a GET of url answers 200.
func httpOK(url string) bool {
	resp, err := http.Get(url)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}
