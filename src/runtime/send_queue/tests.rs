use super::*;

fn queue_of(chunks: &[(&'static [u8], bool)]) -> SendQueue {
    let mut queue = SendQueue::default();
    for &(bytes, droppable) in chunks {
        queue.push(Bytes::from_static(bytes), droppable);
    }
    queue
}

/// The state of a queue that holds something.
fn state(queue: &SendQueue) -> &Pending {
    queue
        .pending
        .as_deref()
        .expect("a queue with something in it")
}

/// The bytes of the iovec at `i` of the sendmsg in flight.
fn iov(queue: &SendQueue, i: usize) -> &[u8] {
    let buf = state(queue).sending.as_ref().expect("a send in flight");
    // SAFETY: the iovec points into a chunk the queue holds while the send is in flight.
    unsafe { std::slice::from_raw_parts(buf.iov[i].iov_base as *const u8, buf.iov[i].iov_len) }
}

/// Every chunk's bytes, then the tail's.
fn contents(queue: &SendQueue) -> Vec<&[u8]> {
    let Some(state) = queue.pending.as_deref() else {
        return Vec::new();
    };
    let chunks = state.chunks.iter().map(|c| &c.bytes[..]);
    chunks.chain(state.tail.as_deref()).collect()
}

#[test]
fn cost_counts_payload_and_an_overhead_per_chunk() {
    let mut queue = queue_of(&[(b"hello ", false), (b"world", true)]);
    assert_eq!(queue.cost(), 11 + 2 * CHUNK_OVERHEAD);
    queue.start_send(SendBuf::new());
    queue.complete(8, &mut Vec::new()); // "hello wo"
    assert_eq!(queue.cost(), 3 + CHUNK_OVERHEAD);
    queue.start_send(SendBuf::new());
    queue.complete(3, &mut Vec::new());
    assert_eq!(queue.cost(), 0);
    assert!(queue.is_idle());
    assert_eq!(queue.written(), 11);
}

#[test]
fn short_writes_resume_where_they_stopped() {
    let mut queue = queue_of(&[(b"hello ", false), (b"big ", false), (b"world", false)]);
    queue.start_send(SendBuf::new());
    queue.complete(8, &mut Vec::new()); // "hello bi"
    queue.start_send(SendBuf::new());
    assert_eq!(iov(&queue, 0), b"g ");
    assert_eq!(iov(&queue, 1), b"world");
    queue.complete(7, &mut Vec::new());
    assert!(queue.is_idle());
}

#[test]
fn nothing_is_copied_while_no_send_is_in_flight() {
    let shared = Bytes::from(vec![7u8; 1000]);
    let mut queue = SendQueue::default();
    queue.push(shared.slice(0..10), false);
    queue.start_send(SendBuf::new());
    assert_eq!(iov(&queue, 0).as_ptr(), shared.as_ptr(), "written in place");
}

#[test]
fn tiny_pushes_behind_a_send_in_flight_coalesce_into_owned_bytes() {
    // Two bytes cut from a large block: copied, so the block is not kept alive.
    let block = Bytes::from(vec![0u8; 256 << 10]);
    let mut queue = queue_of(&[(b"first", false)]);
    queue.start_send(SendBuf::new());
    for _ in 0..10_000 {
        queue.push(block.slice(0..2), false);
    }
    drop(block);
    assert_eq!(state(&queue).chunks.len(), 1, "copies wait in the tail");
    let tail = state(&queue).tail.as_ref().expect("a tail");
    assert_eq!(tail.len(), 20_000);
    let expected = 5 + 2 * CHUNK_OVERHEAD + tail.capacity();
    assert_eq!(queue.cost(), expected);
    assert!(queue.cost() < 2 * 20_000 + 3 * CHUNK_OVERHEAD);
    // Sent: one entry for ten thousand frames, trimmed to its length.
    queue.complete(5, &mut Vec::new());
    queue.start_send(SendBuf::new());
    assert_eq!(state(&queue).chunks.len(), 1);
    assert_eq!(iov(&queue, 0).len(), 20_000);
    assert_eq!(queue.cost(), 20_000 + CHUNK_OVERHEAD);
}

#[test]
fn copied_bytes_the_kernel_reads_are_never_appended_to() {
    let mut queue = queue_of(&[(b"a", false)]);
    queue.start_send(SendBuf::new());
    queue.push(Bytes::from_static(b"bb"), false);
    queue.complete(0, &mut Vec::new());
    // The copied "bb" is now in flight, with its address in the kernel's hands.
    queue.start_send(SendBuf::new());
    let address = iov(&queue, 1).as_ptr();
    queue.push(Bytes::from_static(b"cc"), false);
    assert_eq!(iov(&queue, 1), b"bb");
    assert_eq!(iov(&queue, 1).as_ptr(), address);
    assert_eq!(contents(&queue), [&b"a"[..], b"bb", b"cc"]);
}

#[test]
fn order_holds_across_copies_and_shared_bytes() {
    let mut queue = queue_of(&[(b"1", false)]);
    queue.start_send(SendBuf::new());
    queue.push(Bytes::from_static(b"2"), false); // copied
    queue.push(Bytes::from_static(b"3"), true); // shared, behind the copy
    queue.push(Bytes::from_static(b"4"), false); // copied again
    queue.complete(1, &mut Vec::new());
    queue.push(Bytes::from_static(b"5"), false); // nothing in flight: shared
    assert_eq!(contents(&queue), [&b"2"[..], b"3", b"4", b"5"]);
    let mut all = Vec::new();
    queue.start_send(SendBuf::new());
    for i in 0..4 {
        all.extend_from_slice(iov(&queue, i));
    }
    assert_eq!(all, b"2345");
    queue.complete(4, &mut Vec::new());
    assert!(queue.is_idle());
    assert_eq!(queue.cost(), 0);
}

#[test]
fn copies_stop_growing_at_their_limit() {
    let mut queue = queue_of(&[(b"a", false)]);
    queue.start_send(SendBuf::new());
    let piece = Bytes::from(vec![1u8; 1000]);
    for _ in 0..200 {
        queue.push(piece.clone(), false);
    }
    let per_buffer = OWNED_CHUNK_LIMIT / 1000;
    let buffers = contents(&queue).len() - 1;
    assert_eq!(buffers, 200usize.div_ceil(per_buffer));
    let payload: usize = contents(&queue).iter().map(|c| c.len()).sum();
    assert_eq!(payload, 200_001);
}

#[test]
fn droppable_bytes_are_never_copied() {
    let message = Bytes::from_static(b"published");
    let mut queue = queue_of(&[(b"a", false)]);
    queue.start_send(SendBuf::new());
    queue.push(message.clone(), true);
    let chunk = &state(&queue).chunks[1];
    assert!(chunk.droppable && chunk.bytes.as_ptr() == message.as_ptr());
}

#[test]
fn dropping_spares_what_is_in_flight_or_not_droppable() {
    let mut queue = queue_of(&[
        (b"aaaa", true),
        (b"bbbb", false),
        (b"cccc", true),
        (b"dddd", true),
    ]);
    queue.start_send(SendBuf::new());
    // The sendmsg covering all four is in flight: nothing may go.
    assert_eq!(queue.drop_oldest(0), Dropped::default());
    queue.complete(2, &mut Vec::new()); // "aa" written, "aa" left
    let each = 4 + CHUNK_OVERHEAD;
    assert_eq!(queue.cost(), 2 + CHUNK_OVERHEAD + 3 * each);
    // Partly written "aa" and the non-droppable "bbbb" stay; "cccc" goes first.
    let low_water = queue.cost() - 1;
    assert_eq!(
        queue.drop_oldest(low_water),
        Dropped {
            chunks: 1,
            bytes: each
        }
    );
    assert_eq!(contents(&queue), [&b"aaaa"[..], b"bbbb", b"dddd"]);
    assert_eq!(
        queue.drop_oldest(0),
        Dropped {
            chunks: 1,
            bytes: each
        }
    );
    assert_eq!(contents(&queue), [&b"aaaa"[..], b"bbbb"]);
    assert_eq!(queue.cost(), 2 + CHUNK_OVERHEAD + each);
}

#[test]
fn dropping_stops_at_the_low_water_mark_without_walking_the_queue() {
    let mut queue = SendQueue::default();
    for _ in 0..100_000 {
        queue.push(Bytes::from_static(b"0123456789"), true);
    }
    let each = 10 + CHUNK_OVERHEAD;
    // Over the mark by one message: exactly one goes, from the front.
    let dropped = queue.drop_oldest(queue.cost() - 1);
    assert_eq!(dropped.chunks, 1);
    assert_eq!(state(&queue).chunks.len(), 99_999);
    // A slow subscriber's steady state: push one, drop one, each in constant work.
    let low_water = queue.cost();
    for _ in 0..100_000 {
        queue.push(Bytes::from_static(b"0123456789"), true);
        assert_eq!(queue.drop_oldest(low_water).chunks, 1);
    }
    assert_eq!(queue.cost(), 99_999 * each);
}

#[test]
fn discarding_keeps_only_what_the_kernel_reads() {
    let mut queue = queue_of(&[(b"aaaa", false), (b"bbbb", true)]);
    queue.start_send(SendBuf::new());
    queue.push(Bytes::from_static(b"cc"), false);
    queue.discard_unsent();
    assert_eq!(contents(&queue), [&b"aaaa"[..], b"bbbb"]);
    assert_eq!(queue.cost(), 8 + 2 * CHUNK_OVERHEAD);
    queue.complete(2, &mut Vec::new());
    queue.start_send(SendBuf::new());
    queue.discard_unsent();
    assert_eq!(
        queue.cost(),
        6 + 2 * CHUNK_OVERHEAD,
        "partly written, all in flight"
    );
    queue.complete(-libc::ECANCELED, &mut Vec::new());
    queue.discard_unsent();
    assert!(queue.is_idle());
    assert_eq!(queue.cost(), 0);
}

#[test]
fn a_tag_comes_back_once_its_whole_chunk_is_written_and_never_if_dropped() {
    let tag = |n| Tag::new(n).expect("non-zero");
    let mut queue = SendQueue::default();
    queue.push_tagged(Bytes::from_static(b"first"), true, Some(tag(1)));
    queue.push_tagged(Bytes::from_static(b"second"), true, Some(tag(2)));
    queue.push_tagged(Bytes::from_static(b"third"), true, Some(tag(3)));
    let mut tags = Vec::new();
    queue.start_send(SendBuf::new());
    queue.complete(3, &mut tags);
    assert!(tags.is_empty(), "\"first\" is only partly written");
    queue.start_send(SendBuf::new());
    queue.complete(2 + 6, &mut tags);
    assert_eq!(tags, [tag(1), tag(2)]);
    assert_eq!(
        queue.drop_oldest(0).chunks,
        1,
        "\"third\" is dropped unsent"
    );
    assert!(queue.is_empty());
    assert_eq!(tags, [tag(1), tag(2)]);
}

#[test]
fn an_idle_queue_holds_no_heap_memory() {
    let mut queue = queue_of(&[(b"hello", false)]);
    assert!(queue.pending.is_some());
    queue.start_send(SendBuf::new());
    queue.push(Bytes::from_static(b" world"), false);
    let mut tags = Vec::new();
    queue.complete(5, &mut tags);
    assert!(queue.pending.is_some(), "the copied tail is still queued");
    queue.start_send(SendBuf::new());
    queue.complete(6, &mut tags);
    assert!(queue.pending.is_none(), "all written: the state is freed");
    assert_eq!(queue.written(), 11);
    assert!(queue.is_idle());
}

#[test]
fn a_state_given_up_comes_back_clean_to_the_next_queue() {
    let mut tags = Vec::new();
    let mut busy = SendQueue::default();
    busy.push(Bytes::from_static(b"hello"), false);
    busy.start_send(SendBuf::new());
    busy.push(Bytes::from_static(b" world"), false);
    busy.complete(3, &mut tags);
    busy.start_send(SendBuf::new());
    let given_up: *const Pending = state(&busy);
    busy.complete(8, &mut tags);
    assert!(busy.pending.is_none(), "all written: the state is given up");

    // The next queue on this thread takes a state as new, whichever its mode.
    let mut sealing = SendQueue::sealing();
    sealing.push(Bytes::from_static(b"plain"), true);
    let taken = state(&sealing);
    assert!(
        std::ptr::eq(taken, given_up),
        "the state given up on this thread is taken again"
    );
    assert!(taken.sealing && taken.sealed == 0 && taken.head_offset == 0);
    assert!(taken.tail.is_none() && taken.sending.is_none());
    assert_eq!(sealing.cost(), 5 + CHUNK_OVERHEAD);
    assert_eq!(contents(&sealing), [&b"plain"[..]]);
    sealing.discard_plaintext();
    assert!(sealing.pending.is_none());

    let mut plain = queue_of(&[(b"again", false)]);
    assert!(!state(&plain).sealing);
    assert_eq!(plain.cost(), 5 + CHUNK_OVERHEAD);
    plain.start_send(SendBuf::new());
    assert_eq!(iov(&plain, 0), b"again");
    plain.complete(5, &mut tags);
    assert!(plain.is_idle() && tags.is_empty());
}

#[test]
fn stale_messages_go_from_the_front_until_the_first_fresh_one() {
    let tag = |n| Tag::new(n).expect("non-zero");
    let mut queue = SendQueue::default();
    queue.push_tagged(Bytes::from_static(b"in flight"), true, Some(tag(1)));
    queue.start_send(SendBuf::new());
    queue.push(Bytes::from_static(b"pong"), false);
    for n in 2..=5 {
        queue.push_tagged(Bytes::from_static(b"message"), true, Some(tag(n)));
    }
    assert_eq!(
        queue.oldest_tag(),
        Some(tag(2)),
        "past the sendmsg's and the pong"
    );
    // Tags 2 and 3 are stale; the sendmsg's chunk and the control frame stay.
    let dropped = queue.drop_stale(|t| t.get() < 4);
    let each = 7 + CHUNK_OVERHEAD;
    assert_eq!(
        dropped,
        Dropped {
            chunks: 2,
            bytes: 2 * each
        }
    );
    assert_eq!(
        contents(&queue),
        [&b"in flight"[..], b"pong", b"message", b"message"]
    );
    // The first fresh message ends the walk, even with a stale one behind it.
    queue.push_tagged(Bytes::from_static(b"late"), true, Some(tag(1)));
    assert_eq!(queue.drop_stale(|t| t.get() < 4), Dropped::default());
    assert_eq!(queue.oldest_tag(), Some(tag(4)));
    let mut tags = Vec::new();
    queue.complete(9, &mut tags);
    assert_eq!(tags, [tag(1)]);
}
