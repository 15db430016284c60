package relay

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/databus-go/databus/internal/atomicfile"
	"github.com/databus-go/databus/schema"
	"github.com/databus-go/databus/source"
)

// File names inside Config.StateDir.
const (
	positionFile = "position.json"
	schemasFile  = "schemas.json"
)

// stateVersion is the format version of position.json and schemas.json.
const stateVersion = 1

// position is the content of position.json:
//
//	{"version":1,"lowWatermark":{"scn":120,"data":{...}},"maxScn":500}
//
// Invariant (kept by the release loop): the file is written, and synced,
// before the source is told to Release LowWatermark, so the source always
// retains every window after the persisted low watermark.
type position struct {
	Version int `json:"version"`
	// LowWatermark is the position after the newest window the relay has
	// evicted (or the position it started from): a restart runs the source
	// from it.
	LowWatermark source.Position `json:"lowWatermark"`
	// MaxSCN is the newest SCN the relay had captured when it last wrote the
	// file; after a restart the source must yield windows up to at least it,
	// or clients that consumed them would see a gap.
	MaxSCN uint64 `json:"maxScn"`
}

// schemasState is the content of schemas.json: every schema version the
// relay has registered, so that after a restart it still decodes events
// written with a version announced before its low watermark.
type schemasState struct {
	Version int            `json:"version"`
	Tables  []schema.Table `json:"tables"`
}

// ErrState is wrapped by errors about the files in the state directory.
var ErrState = errors.New("databus: relay state")

// readPosition returns the persisted position; ok is false when there is
// none yet (a relay's first start).
func readPosition(dir string) (p position, ok bool, err error) {
	ok, err = readJSON(filepath.Join(dir, positionFile), &p)
	if err != nil || !ok {
		return position{}, ok, err
	}
	if p.Version != stateVersion {
		return position{}, false, fmt.Errorf("%w: %s has format version %d, this relay reads version %d",
			ErrState, filepath.Join(dir, positionFile), p.Version, stateVersion)
	}
	if p.LowWatermark.SCN > p.MaxSCN {
		return position{}, false, fmt.Errorf("%w: %s: lowWatermark.scn %d is above maxScn %d",
			ErrState, filepath.Join(dir, positionFile), p.LowWatermark.SCN, p.MaxSCN)
	}
	return p, true, nil
}

func writePosition(dir string, p position) error {
	p.Version = stateVersion
	return writeFileJSON(dir, positionFile, p)
}

func readSchemas(dir string) ([]schema.Table, error) {
	var s schemasState
	ok, err := readJSON(filepath.Join(dir, schemasFile), &s)
	if err != nil || !ok {
		return nil, err
	}
	if s.Version != stateVersion {
		return nil, fmt.Errorf("%w: %s has format version %d, this relay reads version %d",
			ErrState, filepath.Join(dir, schemasFile), s.Version, stateVersion)
	}
	return s.Tables, nil
}

func writeSchemas(dir string, tables []schema.Table) error {
	return writeFileJSON(dir, schemasFile, schemasState{Version: stateVersion, Tables: tables})
}

func readJSON(path string, v any) (ok bool, err error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("%w: %v", ErrState, err)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return false, fmt.Errorf("%w: %s is corrupt (%v): restore it or, to capture again from the oldest change the source still has, remove it", ErrState, path, err)
	}
	return true, nil
}

// writeFileJSON replaces dir/name atomically and durably (see atomicfile):
// a crash leaves either the old or the new content, never a mix.
func writeFileJSON(dir, name string, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	if err := atomicfile.Write(filepath.Join(dir, name), append(b, '\n')); err != nil {
		return fmt.Errorf("%w: %v", ErrState, err)
	}
	return nil
}
