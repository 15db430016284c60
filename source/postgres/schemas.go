package postgres

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"sort"
	"sync"

	"github.com/databus-go/databus/internal/atomicfile"
	"github.com/databus-go/databus/schema"
)

// schemaFile is the name of the persisted schema history in Config.StateDir.
const schemaFile = "postgres-schemas.json"

// schemaFormat is the format version of schemaFile; a reader that meets
// another refuses rather than guessing.
const schemaFormat = 1

// storeFile is the layout of schemaFile:
//
//	{"format":1,"sources":[{"id":1,"name":"public.orders",
//	  "versions":[{...schema.Table...}],
//	  "relations":[{"def":"<relation message digest>","version":1}],
//	  "transitions":[{"at":23456789,"version":1}]}]}
//
// Versions hold every definition ever seen for the name. Relations map the
// definitions the log's relation messages carry (column names, type OIDs,
// type modifiers, key flags, replica identity) to the version they were
// resolved to the first time, so that a re-read never needs the catalog
// (which may have changed since) to find a version. Transitions record at
// which commits (commit LSN) the rows of the table switched version, in
// commit order and, within one transaction, in event order: they decide
// where schema-change events fall, identically on every read of the log.
type storeFile struct {
	Format  int           `json:"format"`
	Sources []storeSource `json:"sources"`
}

type storeSource struct {
	ID          uint32         `json:"id"`
	Name        string         `json:"name"`
	Versions    []schema.Table `json:"versions"`
	Relations   []relationDef  `json:"relations,omitempty"`
	Transitions []transition   `json:"transitions,omitempty"`
}

type relationDef struct {
	Def     string `json:"def"`
	Version uint16 `json:"version"`
}

type transition struct {
	At      uint64 `json:"at"`
	Version uint16 `json:"version"`
}

// schemaStore maps table definitions to logical source ids and versions and
// persists the map, so that the same definition always gets the same
// version and the same name the same id, across runs and restarts.
//
// It is safe for concurrent use. Every change is written (atomically, with
// fsync) before the method that made it returns, so a window that announces
// a version is never emitted before the version is durable.
type schemaStore struct {
	path string

	mu sync.Mutex
	// Guarded by mu. Invariant: byName[s.Name] == s for every s in sources;
	// versions of a source are in ascending version order; transitions in
	// ascending At order, several at one At in event order.
	sources []*storeSource
	byName  map[string]*storeSource
	byID    map[uint32]*storeSource
	byDef   map[string]uint16 // defKey(table) → version
	byRel   map[string]uint16 // name + "\x00" + relation digest → version
}

func openSchemaStore(dir string) (*schemaStore, error) {
	st := &schemaStore{
		path:   filepath.Join(dir, schemaFile),
		byName: map[string]*storeSource{},
		byID:   map[uint32]*storeSource{},
		byDef:  map[string]uint16{},
		byRel:  map[string]uint16{},
	}
	b, err := os.ReadFile(st.path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("%w: state dir: %v", errStore, err)
		}
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("%w: read %s: %v", errStore, st.path, err)
	}
	var f storeFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("%w: %s is corrupt: %v", errStore, st.path, err)
	}
	if f.Format != schemaFormat {
		return nil, fmt.Errorf("%w: %s has format %d; this version reads format %d", errStore, st.path, f.Format, schemaFormat)
	}
	for i := range f.Sources {
		s := &f.Sources[i]
		if s.ID == 0 || st.byName[s.Name] != nil || st.byID[s.ID] != nil {
			return nil, fmt.Errorf("%w: %s is corrupt: source %q id %d", errStore, st.path, s.Name, s.ID)
		}
		// The file is indented: compact the Avro types back to the form
		// the adapter builds, which the decoder looks its decoding up by.
		for _, v := range s.Versions {
			for j := range v.Columns {
				var b bytes.Buffer
				if err := json.Compact(&b, v.Columns[j].Avro); err != nil {
					return nil, fmt.Errorf("%w: %s is corrupt: %s column %s: %v", errStore, st.path, s.Name, v.Columns[j].Name, err)
				}
				v.Columns[j].Avro = b.Bytes()
			}
		}
		st.sources = append(st.sources, s)
		st.byName[s.Name] = s
		st.byID[s.ID] = s
		for _, v := range s.Versions {
			st.byDef[defKey(v)] = v.Version
		}
		for _, r := range s.Relations {
			st.byRel[s.Name+"\x00"+r.Def] = r.Version
		}
	}
	return st, nil
}

// defKey identifies a definition: the name, the columns and the key.
func defKey(t schema.Table) string {
	b, _ := json.Marshal(struct {
		C []schema.Column
		K []string
	}{t.Columns, t.Key})
	return t.Name + "\x00" + string(b)
}

// resolve returns def (a schema.Table without id and version) with the id
// of its name and the version of its definition, assigning and persisting
// new ones when unseen.
func (st *schemaStore) resolve(def schema.Table) (schema.Table, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.resolveLocked(def, "")
}

// resolveRelation returns the version a relation message's definition
// (digest rel) of table name resolved to before, or, the first time, the
// version of build's definition, and remembers the pair.
func (st *schemaStore) resolveRelation(name, rel string, build func() (schema.Table, error)) (schema.Table, error) {
	st.mu.Lock()
	if v, ok := st.byRel[name+"\x00"+rel]; ok {
		s := st.byName[name]
		for _, t := range s.Versions {
			if t.Version == v {
				st.mu.Unlock()
				return t, nil
			}
		}
	}
	st.mu.Unlock()
	// build may query the catalog: not under the lock.
	def, err := build()
	if err != nil {
		return schema.Table{}, err
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.resolveLocked(def, rel)
}

func (st *schemaStore) resolveLocked(def schema.Table, rel string) (schema.Table, error) {
	k := defKey(def)
	s := st.byName[def.Name]
	if v, ok := st.byDef[k]; ok {
		def.ID, def.Version = s.ID, v
		if rel == "" || st.byRel[def.Name+"\x00"+rel] == v {
			return def, nil
		}
		s.Relations = append(s.Relations, relationDef{Def: rel, Version: v})
		st.byRel[def.Name+"\x00"+rel] = v
		if err := st.saveLocked(); err != nil {
			s.Relations = s.Relations[:len(s.Relations)-1]
			delete(st.byRel, def.Name+"\x00"+rel)
			return schema.Table{}, err
		}
		return def, nil
	}
	if err := (&schema.Table{Name: def.Name, Columns: def.Columns, Key: def.Key}).Validate(); err != nil {
		return schema.Table{}, err
	}
	newSource := s == nil
	if newSource {
		id := uint32(1)
		for _, o := range st.sources {
			id = max(id, o.ID+1)
		}
		s = &storeSource{ID: id, Name: def.Name}
	}
	if n := len(s.Versions); n > 0 && s.Versions[n-1].Version == math.MaxUint16 {
		return schema.Table{}, fmt.Errorf("%w: %s has run out of schema versions", errStore, def.Name)
	}
	def.ID = s.ID
	def.Version = 1
	if n := len(s.Versions); n > 0 {
		def.Version = s.Versions[n-1].Version + 1
	}
	s.Versions = append(s.Versions, def)
	if rel != "" {
		s.Relations = append(s.Relations, relationDef{Def: rel, Version: def.Version})
	}
	if newSource {
		st.sources = append(st.sources, s)
	}
	if err := st.saveLocked(); err != nil {
		s.Versions = s.Versions[:len(s.Versions)-1]
		if rel != "" {
			s.Relations = s.Relations[:len(s.Relations)-1]
		}
		if newSource {
			st.sources = st.sources[:len(st.sources)-1]
		}
		return schema.Table{}, err
	}
	st.byName[def.Name] = s
	st.byID[s.ID] = s
	st.byDef[k] = def.Version
	if rel != "" {
		st.byRel[def.Name+"\x00"+rel] = def.Version
	}
	return def, nil
}

// table returns version v of source id.
func (st *schemaStore) table(id uint32, v uint16) (schema.Table, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	if s := st.byID[id]; s != nil {
		for _, t := range s.Versions {
			if t.Version == v {
				return t, true
			}
		}
	}
	return schema.Table{}, false
}

// versionBefore returns the version source id's rows used last before the
// transaction committing at commit LSN at, or ok=false when no earlier
// transition is recorded.
func (st *schemaStore) versionBefore(id uint32, at uint64) (uint16, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.byID[id]
	if s == nil {
		return 0, false
	}
	i := sort.Search(len(s.Transitions), func(i int) bool { return s.Transitions[i].At >= at })
	if i == 0 {
		return 0, false
	}
	return s.Transitions[i-1].Version, true
}

// idVersion is one transition inside a transaction.
type idVersion struct {
	id uint32
	v  uint16
}

// recordCommit records the transitions of the transaction committing at
// at, in event order, replacing those an earlier read recorded there (a
// re-read records the same ones), and persists them when they changed.
func (st *schemaStore) recordCommit(at uint64, list []idVersion) error {
	st.mu.Lock()
	defer st.mu.Unlock()
	byID := map[uint32][]transition{}
	var order []uint32
	for _, t := range list {
		if _, ok := byID[t.id]; !ok {
			order = append(order, t.id)
		}
		byID[t.id] = append(byID[t.id], transition{At: at, Version: t.v})
	}
	type undo struct {
		s   *storeSource
		old []transition
	}
	var undos []undo
	for _, id := range order {
		s := st.byID[id]
		if s == nil {
			return fmt.Errorf("%w: transition of unknown source %d", errStore, id)
		}
		lo := sort.Search(len(s.Transitions), func(i int) bool { return s.Transitions[i].At >= at })
		hi := sort.Search(len(s.Transitions), func(i int) bool { return s.Transitions[i].At > at })
		if equalTransitions(s.Transitions[lo:hi], byID[id]) {
			continue
		}
		old := s.Transitions
		nt := make([]transition, 0, len(old)-(hi-lo)+len(byID[id]))
		nt = append(nt, old[:lo]...)
		nt = append(nt, byID[id]...)
		nt = append(nt, old[hi:]...)
		s.Transitions = nt
		undos = append(undos, undo{s, old})
	}
	if len(undos) == 0 {
		return nil
	}
	if err := st.saveLocked(); err != nil {
		for _, u := range undos {
			u.s.Transitions = u.old
		}
		return err
	}
	return nil
}

func equalTransitions(a, b []transition) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// saveLocked writes the history atomically: a temporary file, fsync,
// rename, fsync of the directory.
func (st *schemaStore) saveLocked() error {
	f := storeFile{Format: schemaFormat, Sources: make([]storeSource, len(st.sources))}
	for i, s := range st.sources {
		f.Sources[i] = *s
	}
	b, err := json.MarshalIndent(f, "", " ")
	if err != nil {
		return err
	}
	if err := atomicWrite(st.path, b); err != nil {
		return fmt.Errorf("%w: persist %s: %v", errStore, st.path, err)
	}
	return nil
}

// atomicWrite replaces path with b and a trailing newline.
func atomicWrite(path string, b []byte) error { return atomicfile.Write(path, append(b, '\n')) }
