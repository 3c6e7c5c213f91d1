//! Connections driven by tokio-uring tasks over a [`Link`]: the driver for shaped links,
//! where the link model's timers decide when bytes move.
//!
//! Two tasks per connection around its [`Conn`]: this one reads (and keeps the clock: the
//! connection's deadlines and the run's phases), and a writer, the only task that writes, so
//! frames never interleave and a slow uplink never holds up reading.

use std::cell::{Cell, RefCell};
use std::pin::pin;
use std::rc::Rc;

use tokio::sync::{Notify, watch};

use crate::client::{CLOSE_TIMEOUT, Conn, ConnError, Ctx};
use crate::clock::Clock;
use crate::link::Link;
use crate::open::Opened;
use crate::plan::Phase;
use crate::stats::Stats;

/// Bytes asked of each read.
const READ_SIZE: usize = 64 << 10;

/// Runs `conn` on `opened` until it is done. Dropping the future cuts the connection
/// without a close handshake (its writer ends too).
pub async fn run(
    opened: Opened,
    conn: Conn,
    stats: Rc<RefCell<Stats>>,
    mut phase: watch::Receiver<Phase>,
) {
    let Opened {
        link, mut leftover, ..
    } = opened;
    let clock = Clock;
    let conn = Rc::new(RefCell::new(conn));
    let wake_writer = Rc::new(Notify::new());
    // The writer tells the reader when a write made room for more (new deadlines).
    let wake_reader = Rc::new(Notify::new());
    let reader_gone = Rc::new(Cell::new(false));
    let _ending = EndsWriter(wake_writer.clone(), reader_gone.clone());
    let mut writer = tokio_uring::spawn(write_loop(
        link.clone(),
        conn.clone(),
        stats.clone(),
        (wake_writer.clone(), wake_reader.clone(), reader_gone),
        phase.clone(),
    ));
    let with =
        |f: &mut dyn FnMut(&mut Conn, &mut Ctx<'_>) -> Option<u64>, phase: Phase| -> Option<u64> {
            let mut stats = stats.borrow_mut();
            let mut ctx = Ctx {
                stats: &mut stats,
                phase,
                now_ns: clock.now_ns(),
            };
            f(&mut conn.borrow_mut(), &mut ctx)
        };

    let mut deadline = with(
        &mut |conn, ctx| {
            if !leftover.is_empty() {
                conn.on_read(&mut leftover, ctx);
            }
            conn.on_time(ctx)
        },
        *phase.borrow(),
    );
    let mut read = pin!(read_piece(link.clone(), Vec::with_capacity(READ_SIZE)));
    let mut phase_open = true;
    while !conn.borrow().is_done() {
        if conn.borrow().has_output() {
            wake_writer.notify_one();
        }
        let sleep =
            tokio::time::sleep_until(clock.instant_at(deadline.unwrap_or(u64::MAX / 2)).into());
        tokio::select! {
            (result, mut buf) = &mut read => {
                let now_phase = *phase.borrow();
                let mut result = Some(result);
                deadline = with(&mut |conn, ctx| {
                    match result.take() {
                        Some(Ok(0)) => conn.on_eof(ctx),
                        Some(Ok(_)) => conn.on_read(&mut buf, ctx),
                        Some(Err(error)) => conn.on_io_error(ConnError::Read(error), ctx),
                        None => {}
                    }
                    conn.on_time(ctx)
                }, now_phase);
                buf.clear();
                read.set(read_piece(link.clone(), buf));
            }
            _ = sleep, if deadline.is_some() => {
                deadline = with(&mut |conn, ctx| conn.on_time(ctx), *phase.borrow());
            }
            _ = wake_reader.notified() => {
                deadline = with(&mut |conn, ctx| conn.on_time(ctx), *phase.borrow());
            }
            changed = phase.changed(), if phase_open => {
                phase_open = changed.is_ok();
                deadline = with(&mut |conn, ctx| conn.on_time(ctx), *phase.borrow());
            }
        }
    }
    // The writer sends what is left (the answer to the server's close, say), then ends;
    // a server that stopped reading gets the close timeout, then the socket's end. A cut
    // connection's socket goes at once, which ends a write waiting on it.
    if conn.borrow().is_cut() {
        link.shutdown();
    }
    wake_writer.notify_one();
    if tokio::time::timeout(CLOSE_TIMEOUT, &mut writer)
        .await
        .is_err()
    {
        link.shutdown();
        let _ = writer.await;
    }
    link.shutdown();
}

/// Tells the writer the reader is gone, however the reader ends (dropped included).
struct EndsWriter(Rc<Notify>, Rc<Cell<bool>>);

impl Drop for EndsWriter {
    fn drop(&mut self) {
        self.1.set(true);
        self.0.notify_one();
    }
}

async fn read_piece(link: Rc<Link>, buf: Vec<u8>) -> (std::io::Result<usize>, Vec<u8>) {
    link.read(buf).await
}

/// The connection's only writer: whatever the connection queued leaves in one write.
async fn write_loop(
    link: Rc<Link>,
    conn: Rc<RefCell<Conn>>,
    stats: Rc<RefCell<Stats>>,
    (wake, wake_reader, reader_gone): (Rc<Notify>, Rc<Notify>, Rc<Cell<bool>>),
    phase: watch::Receiver<Phase>,
) {
    let mut batch = Vec::with_capacity(4096);
    loop {
        conn.borrow_mut().swap_output(&mut batch);
        if batch.is_empty() {
            if conn.borrow().is_done() || reader_gone.get() {
                return;
            }
            wake.notified().await;
            continue;
        }
        let len = batch.len();
        let (result, written) = link.write_all(batch).await;
        batch = written;
        batch.clear();
        let mut stats = stats.borrow_mut();
        let mut ctx = Ctx {
            stats: &mut stats,
            phase: *phase.borrow(),
            now_ns: Clock.now_ns(),
        };
        match result {
            Ok(()) => {
                conn.borrow_mut().on_written(len, &mut ctx);
                wake_reader.notify_one();
            }
            Err(error) => {
                conn.borrow_mut()
                    .on_io_error(ConnError::Write(error), &mut ctx);
                // The reader may be waiting on a read that never comes: end it.
                link.shutdown();
                return;
            }
        }
    }
}
