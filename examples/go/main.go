// The two-device flow from Go with mattn/go-sqlite3, loading sqlite-attachments.
//
//	GO111MODULE=off GOPATH=/usr/share/gocode go build -o flow . && ./flow ../../dist/attachments WORKDIR
//
// (Debian: apt-get install golang-go golang-github-mattn-go-sqlite3-dev)
package main

import (
	"database/sql"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	sqlite3 "github.com/mattn/go-sqlite3"
)

func must(err error) {
	if err != nil {
		fmt.Fprintln(os.Stderr, "FAIL go:", err)
		os.Exit(1)
	}
}

func one(db *sql.DB, query string, args ...interface{}) (v interface{}) {
	must(db.QueryRow(query, args...).Scan(&v))
	return v
}

const usage = `usage: flow LIBRARY WORKDIR

Runs the two-device flow with sqlite-attachments loaded from LIBRARY (the path
without its suffix, e.g. ../../dist/attachments) in the existing folder WORKDIR.
`

func main() {
	if len(os.Args) != 3 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	lib, work := os.Args[1], os.Args[2]
	// Every connection the pool opens loads the extension.
	sql.Register("sqlite3_attachments", &sqlite3.SQLiteDriver{Extensions: []string{lib}})

	device := func(name string) *sql.DB {
		db, err := sql.Open("sqlite3_attachments", filepath.Join(work, name+".db"))
		must(err)
		db.SetMaxOpenConns(1) // one connection: explicit transactions below stay on it
		cfg, _ := json.Marshal(map[string]string{"local_dir": "files-" + name, "remote": "file://" + work + "/remote"})
		one(db, "SELECT attachment_init(?)", string(cfg))
		_, err = db.Exec("CREATE TABLE users(id INTEGER PRIMARY KEY, photo_id TEXT)")
		must(err)
		one(db, "SELECT attachment_watch('photos', 'SELECT photo_id AS id, ''jpg'' AS file_extension FROM users')")
		return db
	}
	a, b := device("a"), device("b")

	// Save in the app's own transaction; a rollback leaves nothing behind.
	tx, err := a.Begin()
	must(err)
	_, err = tx.Exec("INSERT INTO users VALUES (1, attachment_save(?, 'jpg'))", []byte("rolled back"))
	must(err)
	must(tx.Rollback())
	if n := one(a, "SELECT count(*) FROM attachments").(int64); n != 0 {
		must(fmt.Errorf("rollback left %d rows", n))
	}
	tx, err = a.Begin()
	must(err)
	_, err = tx.Exec("INSERT INTO users VALUES (1, attachment_save(?, 'jpg'))", []byte("photo bytes"))
	must(err)
	must(tx.Commit())

	// The summary has more keys (some of them objects); these two are what the flow checks.
	var summary struct {
		Uploaded   int `json:"uploaded"`
		Downloaded int `json:"downloaded"`
	}
	must(json.Unmarshal([]byte(one(a, "SELECT attachment_sync()").(string)), &summary))
	if summary.Uploaded != 1 {
		must(fmt.Errorf("upload summary %v", summary))
	}
	// The second database downloads through its reference.
	_, err = b.Exec("INSERT INTO users VALUES (1, ?)", one(a, "SELECT photo_id FROM users"))
	must(err)
	must(json.Unmarshal([]byte(one(b, "SELECT attachment_sync()").(string)), &summary))
	content, err := os.ReadFile(one(b, "SELECT attachment_local_uri(photo_id) FROM users").(string))
	must(err)
	if summary.Downloaded != 1 || string(content) != "photo bytes" {
		must(fmt.Errorf("download summary %v, content %q", summary, content))
	}
	// The background worker moves a file by itself.
	one(a, "SELECT attachment_start_sync()")
	_, err = a.Exec("INSERT INTO users VALUES (2, attachment_save(?, 'jpg'))", []byte("second photo"))
	must(err)
	deadline := time.Now().Add(30 * time.Second)
	for one(a, "SELECT state FROM attachments WHERE id = (SELECT photo_id FROM users WHERE id = 2)").(int64) != 3 {
		if time.Now().After(deadline) {
			must(fmt.Errorf("the worker did not upload the file"))
		}
		time.Sleep(50 * time.Millisecond)
	}
	one(a, "SELECT attachment_stop_sync()")
	fmt.Println("ok   go/mattn-go-sqlite3: load, save in a transaction, rollback, sync, second device, worker")
}
