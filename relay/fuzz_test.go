package relay

import (
	"net/http"
	"net/url"
	"testing"

	"github.com/databus-go/databus/schema"
)

// FuzzStreamQuery feeds arbitrary query strings to the /v1/stream parameter
// parser: it must never panic, every error must be a 400 with a stable code
// naming a parameter, and every accepted query must be within bounds.
func FuzzStreamQuery(f *testing.F) {
	reg := schema.NewRegistry()
	for _, tb := range []schema.Table{personV1, orderV1, orderV2, tagV1} {
		if _, err := reg.Put(tb); err != nil {
			f.Fatal(err)
		}
	}
	ok := url.QueryEscape(cp(7))
	for _, s := range []string{
		"", "checkpoint=" + ok,
		"checkpoint=" + ok + "&sources=db.person,db.tag&partition=mod:0,1/4&maxBytes=2048&wait=1s&format=json&client=c-1",
		"checkpoint=" + ok + "&partition=range:-5-10,20-30&sources=db.person",
		"checkpoint=" + ok + "&partition=range:0-1",
		"checkpoint=" + ok + "&wait=61s", "checkpoint=%7B&x=1", "checkpoint=" + ok + "&checkpoint=" + ok,
		"checkpoint=" + url.QueryEscape(`{"v":1,"mode":"bootstrap_catchup","scn":3,"bootstrap":{"startScn":1,"targetScn":5}}`),
		"%zz", "a=%", ";;;", "checkpoint=" + ok + "&maxBytes=-1&format=&client=" + "%00",
	} {
		f.Add(s)
	}
	codes := map[string]bool{codeBadCheckpoint: true, codeBadParameter: true, codeBadPartition: true, codeUnknownSource: true}
	f.Fuzz(func(t *testing.T, raw string) {
		q, err := parseStreamQuery(raw, reg)
		if err != nil {
			if err.status != http.StatusBadRequest || !codes[err.Code] || err.Parameter == "" || err.Message == "" {
				t.Fatalf("%q: error %+v", raw, err)
			}
			return
		}
		if q.maxBytes < minMaxBytes || q.maxBytes > maxMaxBytes || q.wait < 0 || q.wait > maxWait {
			t.Fatalf("%q: out of bounds: %+v", raw, q)
		}
		if q.client != "" && !validClient(q.client) {
			t.Fatalf("%q: client %q", raw, q.client)
		}
	})
}
