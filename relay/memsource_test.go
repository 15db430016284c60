package relay

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"sort"
	"sync"
	"testing"

	"github.com/databus-go/databus/event"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// memSource is a scripted in-memory source.Source: a log of windows over
// three logical sources (db.person and db.order with integer keys, db.tag
// with a string key). It honours the retention contract: Run(from) replays
// the retained windows after from.SCN deterministically, then waits for
// more; Release prunes the windows up to the released position; running
// from a pruned position fails.
type memSource struct {
	tables []schema.Table // what Open returns (the current versions)
	codecs map[[2]uint32]*schema.Codec

	mu       sync.Mutex
	log      []source.Window // retained, SCN ascending
	history  []source.Window // every window ever added, never pruned
	lastSCN  uint64
	released uint64
	notify   chan struct{} // closed and replaced by add
	failAt   map[uint64]error
	openErr  []error // returned by the next Open calls, one each
	runs     []source.Position
	releases []source.Position
	opens    int
	closes   int
	// onRelease, when set, runs at the start of Release (without mu held).
	onRelease func(source.Position)
	// openGate, when set, holds Open until it is closed.
	openGate chan struct{}
}

var (
	personV1 = schema.Table{ID: 1, Name: "db.person", Version: 1, Key: []string{"id"}, Columns: []schema.Column{
		{Name: "id", Avro: schema.Primitive("long"), SourceType: "BIGINT"},
		{Name: "name", Avro: schema.Primitive("string"), Nullable: true, SourceType: "TEXT"},
		{Name: "score", Avro: schema.Primitive("double"), Nullable: true, SourceType: "DOUBLE"},
	}}
	orderV1 = schema.Table{ID: 2, Name: "db.order", Version: 1, Key: []string{"id"}, Columns: []schema.Column{
		{Name: "id", Avro: schema.Primitive("long")},
		{Name: "amount", Avro: json.RawMessage(`{"type":"bytes","logicalType":"decimal","precision":10,"scale":2}`), SourceType: "DECIMAL(10,2)"},
		{Name: "person_id", Avro: schema.Primitive("long")},
	}}
	orderV2 = func() schema.Table {
		t := orderV1
		t.Version = 2
		t.Columns = append(append([]schema.Column(nil), orderV1.Columns...), schema.Column{Name: "note", Avro: schema.Primitive("string"), Nullable: true})
		return t
	}()
	tagV1 = schema.Table{ID: 3, Name: "db.tag", Version: 1, Key: []string{"name"}, Columns: []schema.Column{
		{Name: "name", Avro: schema.Primitive("string")},
		{Name: "count", Avro: schema.Primitive("long")},
	}}
)

func newMemSource(t testing.TB) *memSource {
	m := &memSource{
		tables: []schema.Table{personV1, orderV1, tagV1},
		codecs: map[[2]uint32]*schema.Codec{},
		notify: make(chan struct{}),
		failAt: map[uint64]error{},
	}
	for _, tb := range []schema.Table{personV1, orderV1, orderV2, tagV1} {
		c, err := schema.NewCodec(tb.AvroSchema())
		if err != nil {
			t.Fatal(err)
		}
		m.codecs[[2]uint32{tb.ID, uint32(tb.Version)}] = c
	}
	return m
}

func (m *memSource) encode(id uint32, version uint16, row map[string]any) []byte {
	b, err := m.codecs[[2]uint32{id, uint32(version)}].Encode(row)
	if err != nil {
		panic(err)
	}
	return b
}

// script builds the deterministic window at scn; n selects its shape.
func (m *memSource) script(scn uint64, n int) source.Window {
	w := source.Window{SCN: scn, Timestamp: int64(1_700_000_000_000_000_000 + scn*1_000_000), TxID: fmt.Sprintf("0-1-%d", scn),
		Position: source.Position{SCN: scn, Data: json.RawMessage(fmt.Sprintf(`{"off":%d}`, scn*7))}}
	orderVersion := uint16(1)
	if scn >= 500 {
		orderVersion = 2
	}
	if scn == 500 { // db.order changes to version 2 in window 500
		sc, _ := event.NewSchemaChange(scn, w.Timestamp, event.SchemaChange{Source: 2, Name: orderV2.Name, Version: 2, Key: orderV2.Key, Avro: orderV2.AvroSchema()})
		w.Events = append(w.Events, sc)
	}
	if n%7 == 6 {
		return w // heartbeat
	}
	for i := range n%4 + 1 {
		id := int64(scn)*10 + int64(i)
		e := event.Event{Kind: event.KindData, SCN: scn, Timestamp: w.Timestamp, Op: event.Op(i%3 + 1)}
		var row map[string]any
		switch (n + i) % 3 {
		case 0:
			e.Source, e.SchemaVersion = 1, 1
			e.Key = event.AppendKeyInt(nil, id)
			row = map[string]any{"id": id, "name": fmt.Sprintf("p%d", id), "score": float64(id) / 4}
		case 1:
			e.Source, e.SchemaVersion = 2, orderVersion
			e.Key = event.AppendKeyInt(nil, -id)
			row = map[string]any{"id": -id, "amount": big.NewRat(id*100+5, 100), "person_id": id}
			if orderVersion == 2 {
				row["note"] = "n"
			}
		case 2:
			e.Source, e.SchemaVersion = 3, 1
			name := fmt.Sprintf("tag-%d", id)
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

// add appends n scripted windows, SCNs 10 apart, and returns the last SCN.
func (m *memSource) add(n int) uint64 {
	m.mu.Lock()
	defer m.mu.Unlock()
	for range n {
		scn := m.lastSCN + 10
		m.addLocked(m.script(scn, len(m.history)))
	}
	return m.lastSCN
}

// addWindow appends one given window.
func (m *memSource) addWindow(w source.Window) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.addLocked(w)
}

func (m *memSource) addLocked(w source.Window) {
	if w.SCN <= m.lastSCN {
		panic("memSource: SCNs must grow")
	}
	m.lastSCN = w.SCN
	m.log = append(m.log, w)
	m.history = append(m.history, w)
	close(m.notify)
	m.notify = make(chan struct{})
}

// failBefore makes Run return err just before it emits window scn, once.
func (m *memSource) failBefore(scn uint64, err error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.failAt[scn] = err
}

func (m *memSource) Open(ctx context.Context) ([]schema.Table, error) {
	if m.openGate != nil {
		select {
		case <-m.openGate:
		case <-ctx.Done():
			return nil, ctx.Err()
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.opens++
	if len(m.openErr) > 0 {
		err := m.openErr[0]
		m.openErr = m.openErr[1:]
		return nil, err
	}
	return append([]schema.Table(nil), m.tables...), nil
}

var errPruned = errors.New("memSource: position already released")

func (m *memSource) Run(ctx context.Context, from source.Position, emit func(context.Context, *source.Window) error) error {
	m.mu.Lock()
	m.runs = append(m.runs, from)
	if from.SCN < m.released {
		m.mu.Unlock()
		return fmt.Errorf("%w: run from %d, released up to %d", errPruned, from.SCN, m.released)
	}
	if from.SCN > 0 && string(from.Data) != fmt.Sprintf(`{"off":%d}`, from.SCN*7) {
		m.mu.Unlock()
		return fmt.Errorf("memSource: position data %s does not match scn %d", from.Data, from.SCN)
	}
	m.mu.Unlock()
	cur := from.SCN
	for {
		m.mu.Lock()
		var next *source.Window
		if i := sort.Search(len(m.log), func(i int) bool { return m.log[i].SCN > cur }); i < len(m.log) {
			w := m.log[i]
			next = &w
		}
		if next != nil {
			if err, ok := m.failAt[next.SCN]; ok {
				delete(m.failAt, next.SCN)
				m.mu.Unlock()
				return err
			}
			m.mu.Unlock()
			if err := emit(ctx, next); err != nil {
				return err
			}
			cur = next.SCN
			continue
		}
		ch := m.notify
		m.mu.Unlock()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-ch:
		}
	}
}

func (m *memSource) Release(ctx context.Context, pos source.Position) error {
	if m.onRelease != nil {
		m.onRelease(pos)
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	m.releases = append(m.releases, pos)
	if pos.SCN > m.released {
		m.released = pos.SCN
	}
	i := 0
	for i < len(m.log) && m.log[i].SCN <= pos.SCN {
		i++
	}
	m.log = append([]source.Window(nil), m.log[i:]...)
	return nil
}

func (m *memSource) Close() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.closes++
	return nil
}

// window returns the history window with the given SCN.
func (m *memSource) window(scn uint64) (source.Window, bool) {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, w := range m.history {
		if w.SCN == scn {
			return w, true
		}
	}
	return source.Window{}, false
}

// windowsAfter returns the history windows with SCN > after.
func (m *memSource) windowsAfter(after uint64) []source.Window {
	m.mu.Lock()
	defer m.mu.Unlock()
	var out []source.Window
	for _, w := range m.history {
		if w.SCN > after {
			out = append(out, w)
		}
	}
	return out
}

func (m *memSource) stats() (runs, releases []source.Position, opens, closes int) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return append([]source.Position(nil), m.runs...), append([]source.Position(nil), m.releases...), m.opens, m.closes
}
