//! PUBLISH decode/encode: heap allocations per operation (counting allocator)
//! and ns per operation (plain loop, release build).
//!
//! Decode loop, identical for every crate: append the packet bytes to one
//! reused `BytesMut` read buffer (as a socket read would), decode one packet
//! with the crate's public API, drop it. Encode loop: clear one reused output
//! buffer and encode one pre-built packet into it.

use crate::inputs::{bench_v3, bench_v5, PAYLOAD, TOPIC};
use crate::{ALLOCS, REALLOCS};
use bytes::{Bytes, BytesMut};
use std::hint::black_box;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Instant;
use tokio_util::codec::{Decoder, Encoder};

struct Row {
    name: String,
    allocs: f64,
    reallocs: f64,
    ns: f64,
    note: String,
}

fn measure(name: &str, iters: u64, note: &str, mut f: impl FnMut()) -> Row {
    // warm-up (buffers reach steady state)
    for _ in 0..1000 {
        f();
    }
    // allocation count over a separate 100k-iteration run
    let n_alloc = 100_000u64;
    let a0 = ALLOCS.load(Relaxed);
    let r0 = REALLOCS.load(Relaxed);
    for _ in 0..n_alloc {
        f();
    }
    let allocs = (ALLOCS.load(Relaxed) - a0) as f64 / n_alloc as f64;
    let reallocs = (REALLOCS.load(Relaxed) - r0) as f64 / n_alloc as f64;
    let t = Instant::now();
    for _ in 0..iters {
        f();
    }
    let ns = t.elapsed().as_nanos() as f64 / iters as f64;
    Row { name: name.into(), allocs, reallocs, ns, note: note.into() }
}

fn zero_copy(input: &BytesMut, payload: &[u8]) -> bool {
    // called right after a decode: was the payload left pointing into the
    // buffer the packet was read from? (checked on the allocation that the
    // frozen split shares, i.e. the input range before the split)
    let _ = input;
    let _ = payload;
    false
}

pub fn bench(iters: u64) {
    let v3 = bench_v3();
    let v5 = bench_v5();
    println!("Packets: 3.1.1 {} B, 5.0 {} B; iterations {} (timing), 100000 (allocation count); one run.\n", v3.len(), v5.len(), iters);
    let _ = zero_copy;

    let mut rows: Vec<Row> = Vec::new();
    let mut zc: Vec<(String, String)> = Vec::new();

    // ------------------------------------------------ baseline
    {
        let mut buf = BytesMut::with_capacity(4096);
        rows.push(measure("baseline: copy packet into read buffer only", iters, "", || {
            buf.extend_from_slice(&v3);
            black_box(&buf);
            buf.clear();
        }));
    }

    // ------------------------------------------------ mqtt-proto
    {
        use mqtt_proto::{v3 as p3, v5 as p5, Pid, QosPid, TopicName};
        let mut buf = BytesMut::with_capacity(4096);
        rows.push(measure("mqtt-proto v3 decode: Packet::decode(&[u8])", iters, "", || {
            buf.extend_from_slice(&v3);
            let p = p3::Packet::decode(&buf).unwrap().unwrap();
            black_box(&p);
            drop(p);
            buf.clear();
        }));
        rows.push(measure("mqtt-proto v5 decode: Packet::decode(&[u8])", iters, "", || {
            buf.extend_from_slice(&v5);
            let p = p5::Packet::decode(&buf).unwrap().unwrap();
            black_box(&p);
            buf.clear();
        }));
        rows.push(measure("mqtt-proto v3 decode: PollPacket (Akasa path)", iters, "", || {
            buf.extend_from_slice(&v3);
            let mut st = p3::PollPacketState::default();
            let mut rd: &[u8] = &buf;
            let r = futures_lite::future::block_on(p3::PollPacket::new(&mut st, &mut rd)).unwrap();
            black_box(&r);
            drop(r);
            buf.clear();
        }));
        rows.push(measure("mqtt-proto v5 decode: PollPacket (Akasa path)", iters, "", || {
            buf.extend_from_slice(&v5);
            let mut st = p5::PollPacketState::default();
            let mut rd: &[u8] = &buf;
            let r = futures_lite::future::block_on(p5::PollPacket::new(&mut st, &mut rd)).unwrap();
            black_box(&r);
            drop(r);
            buf.clear();
        }));
        // zero-copy check
        buf.extend_from_slice(&v3);
        if let p3::Packet::Publish(p) = p3::Packet::decode(&buf).unwrap().unwrap() {
            let inside = buf.as_ptr_range().contains(&p.payload.as_ptr());
            zc.push(("mqtt-proto".into(), format!("payload is `bytes::Bytes`; shares input buffer: {} (decoder takes `&[u8]`, copies the payload into a new Vec; topic copied into `Arc<str>`)", inside)));
        }
        buf.clear();

        let topic = TopicName::try_from(TOPIC).unwrap();
        let pid = Pid::try_from(1u16).unwrap();
        let pk3 = p3::Packet::Publish(p3::Publish::new(QosPid::Level1(pid), topic.clone(), Bytes::from_static(&PAYLOAD)));
        let mut pb5 = p5::Publish::new(QosPid::Level1(pid), topic, Bytes::from_static(&PAYLOAD));
        pb5.properties.message_expiry_interval = Some(3600);
        pb5.properties.user_properties = vec![p5::UserProperty { name: "key1".into(), value: "value1".into() }];
        let pk5 = p5::Packet::Publish(pb5);
        let e3 = pk3.encode().unwrap();
        let e5 = pk5.encode().unwrap();
        check("mqtt-proto v3 encode", e3.as_ref(), &v3);
        check("mqtt-proto v5 encode", e5.as_ref(), &v5);
        rows.push(measure("mqtt-proto v3 encode: Packet::encode() -> VarBytes", iters, "returns a new Vec each call", || {
            let e = pk3.encode().unwrap();
            black_box(&e);
        }));
        rows.push(measure("mqtt-proto v5 encode: Packet::encode() -> VarBytes", iters, "returns a new Vec each call", || {
            let e = pk5.encode().unwrap();
            black_box(&e);
        }));
    }

    // ------------------------------------------------ rmqtt-codec
    {
        use rmqtt_codec::{types::Publish, types::QoS, v3 as r3, v5 as r5};
        use std::num::{NonZeroU16, NonZeroU32};
        let mut buf = BytesMut::with_capacity(4096);
        let mut c3 = r3::Codec::new(0);
        let mut c5 = r5::Codec::new(0, 0);
        rows.push(measure("rmqtt-codec v3 decode: v3::Codec::decode(&mut BytesMut)", iters, "", || {
            buf.extend_from_slice(&v3);
            let p = c3.decode(&mut buf).unwrap().unwrap();
            black_box(&p);
        }));
        rows.push(measure("rmqtt-codec v5 decode: v5::Codec::decode(&mut BytesMut)", iters, "", || {
            buf.extend_from_slice(&v5);
            let p = c5.decode(&mut buf).unwrap().unwrap();
            black_box(&p);
        }));
        buf.clear();
        buf.extend_from_slice(&v3);
        let range = buf.as_ptr_range();
        if let (r3::Packet::Publish(p), _) = c3.decode(&mut buf).unwrap().unwrap() {
            let inside = range.contains(&p.payload.as_ptr());
            zc.push(("rmqtt-codec".into(), format!("payload is `bytes::Bytes`; shares input buffer: {} (topic is `ByteString`, also a slice of the input)", inside)));
        }

        let mk = |props: Option<r5::PublishProperties>| Publish {
            dup: false,
            retain: false,
            qos: QoS::AtLeastOnce,
            topic: bytestring::ByteString::from_static(TOPIC),
            packet_id: NonZeroU16::new(1),
            payload: Bytes::from_static(&PAYLOAD),
            properties: props,
        };
        let pk3 = r3::Packet::Publish(Box::new(mk(None)));
        let props = r5::PublishProperties {
            message_expiry_interval: NonZeroU32::new(3600),
            user_properties: vec![("key1".into(), "value1".into())],
            ..Default::default()
        };
        let pk5 = r5::Packet::Publish(Box::new(mk(Some(props))));
        let mut out = BytesMut::with_capacity(4096);
        c3.encode(pk3.clone(), &mut out).unwrap();
        check("rmqtt-codec v3 encode", &out, &v3);
        out.clear();
        c5.encode(pk5.clone(), &mut out).unwrap();
        check("rmqtt-codec v5 encode", &out, &v5);
        rows.push(measure("rmqtt-codec v3 packet clone only", iters, "Encoder takes the packet by value", || {
            black_box(pk3.clone());
        }));
        rows.push(measure("rmqtt-codec v3 encode: Codec::encode(pkt.clone(), &mut BytesMut)", iters, "includes the clone above", || {
            out.clear();
            c3.encode(pk3.clone(), &mut out).unwrap();
            black_box(&out);
        }));
        rows.push(measure("rmqtt-codec v5 packet clone only", iters, "Encoder takes the packet by value", || {
            black_box(pk5.clone());
        }));
        rows.push(measure("rmqtt-codec v5 encode: Codec::encode(pkt.clone(), &mut BytesMut)", iters, "includes the clone above", || {
            out.clear();
            c5.encode(pk5.clone(), &mut out).unwrap();
            black_box(&out);
        }));
    }

    // ------------------------------------------------ mqute-codec
    {
        use mqute_codec::codec::PacketCodec;
        use mqute_codec::protocol::{v4 as q4, v5 as q5, Flags, QoS};
        let mut buf = BytesMut::with_capacity(4096);
        let mut c = PacketCodec::new(None, None);
        rows.push(measure("mqute-codec v3 decode: PacketCodec::decode + v4::Packet::decode", iters, "", || {
            buf.extend_from_slice(&v3);
            let raw = c.decode(&mut buf).unwrap().unwrap();
            let p = q4::Packet::decode(raw).unwrap();
            black_box(&p);
        }));
        rows.push(measure("mqute-codec v5 decode: PacketCodec::decode + v5::Packet::decode", iters, "", || {
            buf.extend_from_slice(&v5);
            let raw = c.decode(&mut buf).unwrap().unwrap();
            let p = q5::Packet::decode(raw).unwrap();
            black_box(&p);
        }));
        buf.clear();
        buf.extend_from_slice(&v3);
        let range = buf.as_ptr_range();
        if let q4::Packet::Publish(p) = q4::Packet::decode(c.decode(&mut buf).unwrap().unwrap()).unwrap() {
            let inside = range.contains(&p.payload().as_ptr());
            zc.push(("mqute-codec".into(), format!("payload is `bytes::Bytes`; shares input buffer: {} (topic copied into `String`)", inside)));
        }
        let pk3 = q4::Packet::Publish(q4::Publish::new(TOPIC, 1, Bytes::from_static(&PAYLOAD), Flags::new(QoS::AtLeastOnce)));
        let props = q5::PublishProperties {
            message_expiry_interval: Some(std::time::Duration::from_secs(3600)),
            user_properties: vec![("key1".into(), "value1".into())],
            ..Default::default()
        };
        let pk5 = q5::Packet::Publish(q5::Publish::new(TOPIC, 1, Some(props), Bytes::from_static(&PAYLOAD), Flags::new(QoS::AtLeastOnce)));
        let mut out = BytesMut::with_capacity(4096);
        pk3.encode(&mut out).unwrap();
        check("mqute-codec v3 encode", &out, &v3);
        out.clear();
        pk5.encode(&mut out).unwrap();
        check("mqute-codec v5 encode", &out, &v5);
        rows.push(measure("mqute-codec v3 encode: Packet::encode(&mut BytesMut)", iters, "", || {
            out.clear();
            pk3.encode(&mut out).unwrap();
            black_box(&out);
        }));
        rows.push(measure("mqute-codec v5 encode: Packet::encode(&mut BytesMut)", iters, "", || {
            out.clear();
            pk5.encode(&mut out).unwrap();
            black_box(&out);
        }));
    }

    // ------------------------------------------------ mqttbytes (reference)
    {
        let mut buf = BytesMut::with_capacity(4096);
        rows.push(measure("mqttbytes 0.6 v4 decode: v4::read", iters, "", || {
            buf.extend_from_slice(&v3);
            let p = mqttbytes::v4::read(&mut buf, 1 << 20).unwrap();
            black_box(&p);
        }));
        rows.push(measure("mqttbytes 0.6 v5 decode: v5::read", iters, "", || {
            buf.extend_from_slice(&v5);
            let p = mqttbytes::v5::read(&mut buf, 1 << 20).unwrap();
            black_box(&p);
        }));
        buf.clear();
        buf.extend_from_slice(&v3);
        let range = buf.as_ptr_range();
        if let mqttbytes::v4::Packet::Publish(p) = mqttbytes::v4::read(&mut buf, 1 << 20).unwrap() {
            zc.push(("mqttbytes 0.6".into(), format!("payload is `bytes::Bytes`; shares input buffer: {} (topic copied into `String`)", range.contains(&p.payload.as_ptr()))));
        }
        let mut p3 = mqttbytes::v4::Publish::new(TOPIC, mqttbytes::QoS::AtLeastOnce, PAYLOAD.to_vec());
        p3.pkid = 1;
        let mut p5 = mqttbytes::v5::Publish::new(TOPIC, mqttbytes::QoS::AtLeastOnce, PAYLOAD.to_vec());
        p5.pkid = 1;
        p5.properties = Some(mqttbytes::v5::PublishProperties {
            payload_format_indicator: None,
            message_expiry_interval: Some(3600),
            topic_alias: None,
            response_topic: None,
            correlation_data: None,
            user_properties: vec![("key1".into(), "value1".into())],
            subscription_identifiers: vec![],
            content_type: None,
        });
        let mut out = BytesMut::with_capacity(4096);
        p3.write(&mut out).unwrap();
        check("mqttbytes v4 encode", &out, &v3);
        out.clear();
        p5.write(&mut out).unwrap();
        check("mqttbytes v5 encode", &out, &v5);
        rows.push(measure("mqttbytes 0.6 v4 encode: Publish::write", iters, "", || {
            out.clear();
            p3.write(&mut out).unwrap();
            black_box(&out);
        }));
        rows.push(measure("mqttbytes 0.6 v5 encode: Publish::write", iters, "", || {
            out.clear();
            p5.write(&mut out).unwrap();
            black_box(&out);
        }));
    }

    // ------------------------------------------------ mqttrs (current)
    {
        let mut buf = BytesMut::with_capacity(4096);
        rows.push(measure("mqttrs 0.4.1 v3 decode: decode_slice", iters, "borrows topic and payload from the input", || {
            buf.extend_from_slice(&v3);
            let p = mqttrs::decode_slice(&buf).unwrap().unwrap();
            black_box(&p);
            drop(p);
            buf.clear();
        }));
        let pk = mqttrs::Packet::Publish(mqttrs::Publish {
            dup: false,
            qospid: mqttrs::QosPid::AtLeastOnce(mqttrs::Pid::try_from(1u16).unwrap()),
            retain: false,
            topic_name: TOPIC,
            payload: &PAYLOAD,
        });
        let mut out = [0u8; 256];
        let n = mqttrs::encode_slice(&pk, &mut out).unwrap();
        check("mqttrs encode", &out[..n], &v3);
        rows.push(measure("mqttrs 0.4.1 v3 encode: encode_slice", iters, "", || {
            let n = mqttrs::encode_slice(&pk, &mut out).unwrap();
            black_box(n);
        }));
    }

    println!("| operation | allocs/op | reallocs/op | ns/op | note |\n|---|---:|---:|---:|---|");
    for r in &rows {
        println!("| {} | {:.2} | {:.2} | {:.0} | {} |", r.name, r.allocs, r.reallocs, r.ns, r.note);
    }
    println!("\nZero-copy payload (3.1.1 PUBLISH decoded from a BytesMut):\n");
    for (n, s) in zc {
        println!("- {}: {}", n, s);
    }
}

fn check(what: &str, got: &[u8], want: &[u8]) {
    if got != want {
        println!("- NOTE {}: encoded bytes differ from the reference packet ({} vs {} B): `{}`", what, got.len(), want.len(), crate::inputs::hex(got));
    }
}
