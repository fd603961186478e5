//! CONNECT and CONNACK (§3.1, §3.2): acceptance, CONNACK properties, Server Keep Alive, refusals with 5.0 reason codes, enhanced authentication (§4.12).

use super::*;

/// §3.1.2.2, §3.2.2.2: a level-5 CONNECT is accepted (reason 0x00).
/// §3.2.2.3: the CONNACK advertises Receive Maximum (§3.2.2.3.3),
/// Maximum Packet Size equal to `--max-packet-size` (§3.2.2.3.6) and a
/// non-zero Topic Alias Maximum (§3.2.2.3.8); Retain Available and Wildcard
/// Subscription Available are absent or 1 (the node serves both,
/// §3.2.2.3.5, §3.2.2.3.11). A PINGREQ is then served.
#[tokio::test]
async fn level_5_connect_is_accepted_and_connack_advertises_the_server_limits() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-packet-size", "4096")])?;
    let mut client = connect(&node, "v5").await?;
    let props = &client.connack.props;
    ensure!(
        !client.session_present(),
        "clean start with session present"
    );
    let receive_max = props.get_two(id::RECEIVE_MAXIMUM);
    ensure!(
        receive_max.is_some_and(|r| r > 0),
        "Receive Maximum not advertised: {props:?}"
    );
    ensure!(
        props.get_four(id::MAXIMUM_PACKET_SIZE) == Some(4096),
        "Maximum Packet Size is not --max-packet-size 4096: {props:?}"
    );
    ensure!(
        props
            .get_two(id::TOPIC_ALIAS_MAXIMUM)
            .is_some_and(|t| t > 0),
        "Topic Alias Maximum not advertised: {props:?}"
    );
    for flag in [id::RETAIN_AVAILABLE, id::WILDCARD_SUBSCRIPTION_AVAILABLE] {
        let value = props.get_byte(flag);
        ensure!(
            value.is_none() || value == Some(1),
            "property {flag:#04x} says {value:?}: {props:?}"
        );
    }
    ensure!(
        props.get_text(id::ASSIGNED_CLIENT_IDENTIFIER).is_none(),
        "an identifier assigned to a client that chose one: {props:?}"
    );
    client.ping().await?;
    client.disconnect().await
}

/// §3.1.3.1 [MQTT-3.1.3-6], §3.2.2.3.7: an empty Client Identifier is
/// accepted and the CONNACK carries an Assigned Client Identifier. It is a
/// real identifier: its session (expiry 60 s) is resumed by a later CONNECT
/// that names it with Clean Start 0 (Session Present 1, the subscription
/// kept).
#[tokio::test]
async fn an_empty_client_id_gets_an_assigned_identifier_that_names_the_session() -> Result<()> {
    let node = NodeProcess::start()?;
    let mut first = Client5::connect(node.addr(), &Connect5::new("").session_expiry(60)).await?;
    let assigned = first
        .connack
        .props
        .get_text(id::ASSIGNED_CLIENT_IDENTIFIER)
        .with_context(|| format!("no Assigned Client Identifier: {:?}", first.connack))?;
    ensure!(!assigned.is_empty(), "the assigned identifier is empty");
    ensure!(first.subscribe(1, &[("assigned/t", 1)]).await?.reasons == [1]);
    first.disconnect().await?;

    let mut publisher = connect(&node, "pub").await?;
    ack_reason(
        publisher
            .publish(&Publish5::new("assigned/t", 1, b"kept"))
            .await?,
        0,
    )?;
    let resume = Connect5::new(&assigned)
        .clean_start(false)
        .session_expiry(60);
    let mut again = Client5::connect(node.addr(), &resume).await?;
    ensure!(
        again.session_present(),
        "{assigned} did not resume its session"
    );
    let got = again.recv_publish_acked().await?;
    ensure!(got.payload == b"kept", "got {got:?}");
    Ok(())
}

/// §3.1.2.10, §3.2.2.3.14 [MQTT-3.2.2-21]: when the node clamps the keep
/// alive (`--max-keep-alive 10`), a client asking for 60 s is told the
/// Server Keep Alive it must use (10); one asking for 5 s is not clamped
/// (no Server Keep Alive, or 5).
#[tokio::test]
async fn a_clamped_keep_alive_is_announced_as_server_keep_alive() -> Result<()> {
    let node = NodeProcess::start_with(&[("--max-keep-alive", "10")])?;
    let long = Connect5::new(&unique_id("ka60")).keep_alive(60);
    let client = Client5::connect(node.addr(), &long).await?;
    let told = client.connack.props.get_two(id::SERVER_KEEP_ALIVE);
    ensure!(
        told == Some(10),
        "Server Keep Alive {told:?}, expected 10: {:?}",
        client.connack
    );
    let short = Connect5::new(&unique_id("ka5")).keep_alive(5);
    let client = Client5::connect(node.addr(), &short).await?;
    let told = client.connack.props.get_two(id::SERVER_KEEP_ALIVE);
    ensure!(
        told.is_none() || told == Some(5),
        "keep alive 5 answered with Server Keep Alive {told:?}"
    );
    Ok(())
}

/// §4.12 [MQTT-4.12.0-1], §3.2.2.2: a CONNECT with an Authentication
/// Method the node does not support gets CONNACK 0x8C (Bad authentication
/// method) and the connection is closed.
#[tokio::test]
async fn an_unsupported_authentication_method_gets_connack_0x8c() -> Result<()> {
    let node = NodeProcess::start()?;
    let connect = Connect5::new(&unique_id("scram")).props(
        Properties::new()
            .text(id::AUTHENTICATION_METHOD, "SCRAM-SHA-1")
            .binary(id::AUTHENTICATION_DATA, b"n,,n=user,r=nonce"),
    );
    let mut client = Client5::handshake(node.addr(), &connect).await?;
    ensure!(
        client.connack.reason == reason::BAD_AUTHENTICATION_METHOD,
        "CONNACK {:?}",
        client.connack
    );
    client.expect_closed(TIMEOUT).await?;
    Ok(())
}

/// §3.1.2.11.2, §3.1.2.11.3, §3.1.2.11.4, §3.1.2.11.5: "It is a Protocol
/// Error to include" a CONNECT property more than once, Receive Maximum 0
/// or Maximum Packet Size 0. Such a CONNECT is refused: by §3.1.4 and
/// §4.13.1 the node MAY answer CONNACK 0x82 (if it answers, with that
/// code) and MUST close. Every case is tried.
#[tokio::test]
async fn invalid_connect_properties_are_refused() -> Result<()> {
    let node = NodeProcess::start()?;
    let cases = [
        (
            "Session Expiry Interval twice",
            Properties::new()
                .four(id::SESSION_EXPIRY_INTERVAL, 10)
                .four(id::SESSION_EXPIRY_INTERVAL, 20),
        ),
        (
            "Receive Maximum 0",
            Properties::new().two(id::RECEIVE_MAXIMUM, 0),
        ),
        (
            "Maximum Packet Size 0",
            Properties::new().four(id::MAXIMUM_PACKET_SIZE, 0),
        ),
        (
            "Topic Alias Maximum twice",
            Properties::new()
                .two(id::TOPIC_ALIAS_MAXIMUM, 1)
                .two(id::TOPIC_ALIAS_MAXIMUM, 2),
        ),
    ];
    let mut wrong = Vec::new();
    for (what, props) in cases {
        let connect = Connect5::new(&unique_id("badprops")).props(props);
        match Client5::handshake(node.addr(), &connect).await {
            Ok(mut client) if client.connack.reason == reason::PROTOCOL_ERROR => {
                if let Err(e) = client.expect_closed(TIMEOUT).await {
                    wrong.push(format!("{what}: {e:#}"));
                }
            }
            Ok(client) => wrong.push(format!("{what}: CONNACK {:#04x}", client.connack.reason)),
            // Closed without a CONNACK: allowed.
            Err(e) if format!("{e:#}").contains("closed the connection") => {}
            Err(e) => wrong.push(format!("{what}: {e:#}")),
        }
    }
    ensure!(wrong.is_empty(), "wrong answers: {wrong:?}");
    Ok(())
}

/// §3.2.2.3.14 [MQTT-3.2.2-21], [MQTT-3.2.2-22]: a client asking for no
/// keep alive (0) that the node holds to `--default-keep-alive 20` anyway
/// is told so with Server Keep Alive 20; otherwise it would be closed for
/// a silence it was never told to break.
#[tokio::test]
async fn an_imposed_default_keep_alive_is_announced_as_server_keep_alive() -> Result<()> {
    let node = NodeProcess::start_with(&[("--default-keep-alive", "20")])?;
    let connect = Connect5::new(&unique_id("ka0")).keep_alive(0);
    let client = Client5::connect(node.addr(), &connect).await?;
    let told = client.connack.props.get_two(id::SERVER_KEEP_ALIVE);
    ensure!(
        told == Some(20),
        "keep alive 0 held to 20 s, but Server Keep Alive is {told:?}"
    );
    Ok(())
}

/// §3.2.2.2, §3.1.3.1, §3.1.3.5: refusals carry 5.0 reason codes: a client
/// identifier over `--max-client-id-length` gets 0x85 (Client Identifier
/// not valid), a wrong password 0x86 (Bad User Name or Password), no
/// credentials where anonymous clients are refused 0x86 or 0x87 (Not
/// authorized), and a session beyond `--max-sessions` 0x97 (Quota
/// exceeded) or 0x89 (Server busy); each followed by the close.
#[tokio::test]
async fn connack_refusals_carry_5_0_reason_codes() -> Result<()> {
    let short_ids = NodeProcess::start_with(&[("--max-client-id-length", "23")])?;
    let long_id = Connect5::new("a-client-id-of-28-chars-and-more");
    let code = refusal(&short_ids, &long_id).await?;
    ensure!(code == 0x85, "a too-long client id got {code:#04x}");

    let dir = TempDir::new("astramq-auth5")?;
    let file = dir.join("passwords").display().to_string();
    astramq_tests::users::add_user(&["--password-file", &file], "alice", "in wonderland")?;
    let secured =
        NodeProcess::start_with(&[("--allow-anonymous", "false"), ("--password-file", &file)])?;
    let wrong = Connect5::new(&unique_id("alice")).credentials("alice", "not it");
    let code = refusal(&secured, &wrong).await?;
    ensure!(code == 0x86, "a wrong password got {code:#04x}");
    let anonymous = Connect5::new(&unique_id("anon"));
    let code = refusal(&secured, &anonymous).await?;
    ensure!(
        code == 0x86 || code == reason::NOT_AUTHORIZED,
        "an anonymous client got {code:#04x}"
    );
    let right = Connect5::new(&unique_id("alice")).credentials("alice", "in wonderland");
    Client5::connect(secured.addr(), &right)
        .await?
        .ping()
        .await?;

    let one = NodeProcess::start_with(&[("--max-sessions", "1")])?;
    let mut first = connect(&one, "only").await?;
    let code = refusal(&one, &Connect5::new(&unique_id("second"))).await?;
    ensure!(
        code == 0x97 || code == 0x89,
        "a session beyond --max-sessions got {code:#04x}"
    );
    first.ping().await
}
