//! baseline-save DB DIR N SIZE: N files of SIZE random bytes, each written to a
//! temp name, fsynced, renamed into DIR (directory fsynced), and a row per file,
//! all in one transaction. Prints the elapsed seconds.
use std::fs::{self, File};
use std::io::Write;
use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (db, dir, n, size): (&str, &str, usize, usize) = (&args[1], &args[2], args[3].parse().unwrap(), args[4].parse().unwrap());
    fs::create_dir_all(dir).unwrap();
    let mut conn = rusqlite::Connection::open(db).unwrap();
    conn.execute_batch(
        "PRAGMA journal_mode=WAL;
         CREATE TABLE IF NOT EXISTS files(id TEXT PRIMARY KEY, filename TEXT NOT NULL, local_uri TEXT,
           timestamp INTEGER NOT NULL, size INTEGER, media_type TEXT, state INTEGER NOT NULL, has_synced INTEGER NOT NULL,
           meta_data TEXT);",
    )
    .unwrap();
    let mut data = vec![0u8; size];
    let start = Instant::now();
    let tx = conn.transaction().unwrap();
    {
        let mut insert = tx
            .prepare("INSERT INTO files VALUES (?1, ?2, ?2, 0, ?3, 'application/octet-stream', 0, 0, NULL)")
            .unwrap();
        let dir_handle = File::open(dir).unwrap();
        for _ in 0..n {
            fastrand::fill(&mut data);
            let id = uuid::Uuid::new_v4().to_string();
            let name = format!("{id}.bin");
            let tmp = format!("{dir}/.{name}.tmp");
            let mut f = File::create(&tmp).unwrap();
            f.write_all(&data).unwrap();
            f.sync_all().unwrap();
            fs::rename(&tmp, format!("{dir}/{name}")).unwrap();
            dir_handle.sync_all().unwrap();
            insert.execute(rusqlite::params![id, name, size as i64]).unwrap();
        }
    }
    tx.commit().unwrap();
    println!("{:.4}", start.elapsed().as_secs_f64());
}
