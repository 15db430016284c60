package mysql

import (
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
const schemaFile = "mysql-schemas.json"

// schemaFormat is the format version of schemaFile; a reader that meets
// another refuses rather than guessing.
const schemaFormat = 1

// storeFile is the layout of schemaFile:
//
//	{"format":1,"sources":[{"id":1,"name":"shop.orders",
//	  "versions":[{...schema.Table...}],
//	  "transitions":[{"at":4294967552,"version":1}]}]}
//
// Versions hold every definition ever seen for the name (id and version
// included). Transitions record where in the log the table's definition
// switched to a version: "at" is the log position (file number << 32 |
// offset) of the first event of the transaction whose rows first used it.
// They make schema-change events deterministic: a re-read of the log emits
// them at exactly the same transactions.
type storeFile struct {
	Format  int           `json:"format"`
	Sources []storeSource `json:"sources"`
}

type storeSource struct {
	ID          uint32         `json:"id"`
	Name        string         `json:"name"`
	Versions    []schema.Table `json:"versions"`
	Transitions []transition   `json:"transitions,omitempty"`
}

type transition struct {
	At      uint64 `json:"at"`
	Version uint16 `json:"version"`
}

// schemaStore maps table definitions to logical source ids and versions
// and persists the map, so that the same definition always gets the same
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
	// ascending (at, insertion) order.
	sources []*storeSource
	byName  map[string]*storeSource
	byDef   map[string]uint16 // name + "\x00" + canonical definition → version
}

func openSchemaStore(dir string) (*schemaStore, error) {
	st := &schemaStore{path: filepath.Join(dir, schemaFile), byName: map[string]*storeSource{}, byDef: map[string]uint16{}}
	b, err := os.ReadFile(st.path)
	if errors.Is(err, os.ErrNotExist) {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, fmt.Errorf("databus: mysql: state dir: %w", err)
		}
		return st, nil
	}
	if err != nil {
		return nil, fmt.Errorf("databus: mysql: read schema history: %w", err)
	}
	var f storeFile
	if err := json.Unmarshal(b, &f); err != nil {
		return nil, fmt.Errorf("databus: mysql: schema history %s is corrupt: %w", st.path, err)
	}
	if f.Format != schemaFormat {
		return nil, fmt.Errorf("databus: mysql: schema history %s has format %d; this version reads format %d", st.path, f.Format, schemaFormat)
	}
	for i := range f.Sources {
		s := &f.Sources[i]
		if s.ID == 0 || st.byName[s.Name] != nil {
			return nil, fmt.Errorf("databus: mysql: schema history %s is corrupt: source %q id %d", st.path, s.Name, s.ID)
		}
		st.sources = append(st.sources, s)
		st.byName[s.Name] = s
		for _, v := range s.Versions {
			st.byDef[defKey(v)] = v.Version
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
	k := defKey(def)
	s := st.byName[def.Name]
	if v, ok := st.byDef[k]; ok {
		def.ID, def.Version = s.ID, v
		return def, nil
	}
	if s == nil {
		id := uint32(1)
		for _, o := range st.sources {
			id = max(id, o.ID+1)
		}
		s = &storeSource{ID: id, Name: def.Name}
		st.sources = append(st.sources, s)
		st.byName[def.Name] = s
	}
	if len(s.Versions) > 0 && s.Versions[len(s.Versions)-1].Version == math.MaxUint16 {
		return schema.Table{}, fmt.Errorf("databus: mysql: %s has run out of schema versions", def.Name)
	}
	def.ID = s.ID
	def.Version = 1
	if n := len(s.Versions); n > 0 {
		def.Version = s.Versions[n-1].Version + 1
	}
	if err := def.Validate(); err != nil {
		return schema.Table{}, err
	}
	s.Versions = append(s.Versions, def)
	st.byDef[k] = def.Version
	if err := st.saveLocked(); err != nil {
		s.Versions = s.Versions[:len(s.Versions)-1]
		delete(st.byDef, k)
		return schema.Table{}, err
	}
	return def, nil
}

// announce decides whether the transaction at log position at, which uses
// version v of source id, must carry a schema-change event for it, and
// records the transition when it is new. The decision depends only on the
// log and the persisted history, so re-reading the log decides the same.
func (st *schemaStore) announce(id uint32, name string, at uint64, v uint16) (bool, error) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.byName[name]
	if s == nil || s.ID != id {
		return false, fmt.Errorf("databus: mysql: announce of unknown source %s", name)
	}
	var prev *transition
	for i := range s.Transitions {
		t := &s.Transitions[i]
		if t.At == at && t.Version == v {
			return true, nil // recorded on an earlier read: announce again
		}
		if t.At < at {
			prev = t
		}
	}
	if prev != nil && prev.Version == v {
		return false, nil
	}
	i := sort.Search(len(s.Transitions), func(i int) bool { return s.Transitions[i].At > at })
	s.Transitions = append(s.Transitions, transition{})
	copy(s.Transitions[i+1:], s.Transitions[i:])
	s.Transitions[i] = transition{At: at, Version: v}
	if err := st.saveLocked(); err != nil {
		s.Transitions = append(s.Transitions[:i], s.Transitions[i+1:]...)
		return false, err
	}
	return true, nil
}

// versionAt returns the version of name in force just before log position
// at: the last transition before it, or else the oldest version known.
func (st *schemaStore) versionAt(name string, at uint64) (schema.Table, bool) {
	st.mu.Lock()
	defer st.mu.Unlock()
	s := st.byName[name]
	if s == nil || len(s.Versions) == 0 {
		return schema.Table{}, false
	}
	v := s.Versions[0].Version
	for _, t := range s.Transitions {
		if t.At < at {
			v = t.Version
		}
	}
	for _, t := range s.Versions {
		if t.Version == v {
			return t, true
		}
	}
	return schema.Table{}, false
}

// names returns the names of every source known, sorted, for DROP
// DATABASE.
func (st *schemaStore) names() []string {
	st.mu.Lock()
	defer st.mu.Unlock()
	out := make([]string, 0, len(st.sources))
	for _, s := range st.sources {
		out = append(out, s.Name)
	}
	sort.Strings(out)
	return out
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
		return fmt.Errorf("databus: mysql: persist schema history: %w", err)
	}
	return nil
}

// atomicWrite replaces path with b and a trailing newline.
func atomicWrite(path string, b []byte) error { return atomicfile.Write(path, append(b, '\n')) }
