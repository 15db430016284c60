package client

import (
	"fmt"
	"runtime"
	"testing"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
)

// benchBody is a relay response of windows of perWindow person inserts.
func benchBody(b *testing.B, windows, perWindow int) (*schema.Registry, []byte, int) {
	reg := schema.NewRegistry()
	if _, err := reg.Put(personV1()); err != nil {
		b.Fatal(err)
	}
	c := codecOf(b, personV1())
	var body []byte
	for i := 1; i <= windows; i++ {
		scn := uint64(i)
		var evs []event.Event
		for j := 0; j < perWindow; j++ {
			evs = append(evs, personEvent(b, c, scn, int64(i*perWindow+j)))
		}
		for _, f := range window(b, scn, evs...).frames {
			body = append(body, f...)
		}
	}
	return reg, body, windows * perWindow
}

// BenchmarkDecodeWindows measures turning a response body into Windows, next
// to the ceiling of the same run: event.Decode alone over the same frames
// (checksums included), which any decoder must pay.
func BenchmarkDecodeWindows(b *testing.B) {
	for _, perWindow := range []int{1, 10, 100} {
		reg, body, events := benchBody(b, 10000/perWindow, perWindow)
		b.Run(fmt.Sprintf("ceiling=event.Decode/perWindow=%d", perWindow), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			measure(b, events, func() {
				for off := 0; off < len(body); {
					_, n, err := event.Decode(body[off:])
					if err != nil {
						b.Fatal(err)
					}
					off += n
				}
			})
		})
		b.Run(fmt.Sprintf("windows/perWindow=%d", perWindow), func(b *testing.B) {
			b.SetBytes(int64(len(body)))
			d := windowDecoder{reg: reg, exactCounts: true}
			measure(b, events, func() {
				d.after = 0
				ws, n, err := d.decode(body, false)
				if err != nil || n != len(body) || len(ws) != events/perWindow {
					b.Fatalf("decode: %d windows, %d bytes, %v", len(ws), n, err)
				}
			})
		})
	}
}

// measure runs f b.N times and reports events/s and allocations per event.
func measure(b *testing.B, events int, f func()) {
	b.ReportAllocs()
	var before, after runtime.MemStats
	runtime.ReadMemStats(&before)
	b.ResetTimer()
	for b.Loop() {
		f()
	}
	b.StopTimer()
	runtime.ReadMemStats(&after)
	total := float64(events) * float64(b.N)
	b.ReportMetric(total/b.Elapsed().Seconds(), "events/s")
	b.ReportMetric(float64(after.Mallocs-before.Mallocs)/total, "allocs/event")
}
