//! The MQTT front-end's view of untrusted bytes: the CONNECT sniffer, the v3.1.1 and v5
//! decoders as the connection loop drives them (packet after packet from one buffer, with the
//! packet-size limit), the PUBLISH header reader that runs before each decode, and the ACL
//! decisions on whatever topics and filters come out.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use medlink_broker::codec::{publish_header, sniff_connect, Codec, Packet, Version};
use medlink_broker::identity::valid_name;
use medlink_broker::{AclPolicy, Identity, Role};

fuzz_target!(|data: &[u8]| {
    let _ = sniff_connect(data);
    let acl = AclPolicy::new("js.nj");
    let who = [
        Identity { name: "clinic".into(), role: Role::Client },
        Identity { name: "js.nj.gl".into(), role: Role::Node },
        Identity { name: "ops".into(), role: Role::Admin },
    ];
    for version in [Version::V4, Version::V5] {
        let codec = Codec { version };
        let mut buf = BytesMut::from(data);
        // At most as many packets as there are bytes: every decode consumes at least two.
        for _ in 0..data.len() {
            let _ = publish_header(&buf);
            let Ok(packet) = codec.read(&mut buf, 64 * 1024) else {
                break;
            };
            match packet {
                Packet::Publish(p, _) => {
                    let topic = std::str::from_utf8(&p.topic).unwrap_or("");
                    for w in &who {
                        let _ = acl.publish(w, topic);
                    }
                }
                Packet::Subscribe(s, _) => {
                    for f in &s.filters {
                        for w in &who {
                            let _ = acl.subscribe(w, &f.path);
                        }
                    }
                }
                Packet::Connect(c, _, _, _, login) => {
                    let _ = valid_name(&c.client_id);
                    if let Some(l) = login {
                        let _ = valid_name(&l.username);
                    }
                }
                _ => {}
            }
        }
    }
});
