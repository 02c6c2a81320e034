//! Named admins against Debian's slapd, and the audit log: a member of the admin group logs in
//! with `curl -u` and publishes, a non-member gets 403, a wrong password 401, a stopped LDAP
//! server 503 with a reason; `odi audit` names the user and their address, and keeps it across a
//! restart of the directory. The dashboard's user login works without JavaScript.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

const ADMIN: &str = "7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f";
const ENROLL: &str = "8f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3a2918";
const BASE: &str = "dc=example,dc=org";

fn slapd(dir: &Path, port: u16) -> Proc {
    std::fs::create_dir_all(dir.join("db")).unwrap();
    let conf = format!(
        "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\ninclude /etc/ldap/schema/inetorgperson.schema\n\
         modulepath /usr/lib/ldap\nmoduleload back_mdb\npidfile {d}/slapd.pid\n\
         database mdb\nsuffix \"{BASE}\"\nrootdn \"cn=root,{BASE}\"\nrootpw rootpw\ndirectory {d}/db\n\
         access to attrs=userPassword by anonymous auth by self read by * none\naccess to * by * read\n",
        d = dir.display()
    );
    std::fs::write(dir.join("slapd.conf"), conf).unwrap();
    let child = Command::new("/usr/sbin/slapd")
        .args(["-d", "0", "-h", &format!("ldap://127.0.0.1:{port}/"), "-f"])
        .arg(dir.join("slapd.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("slapd is installed (scripts/test installs it)");
    let proc = Proc(child);
    wait_for(20, "slapd to listen", || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
    proc
}

fn load_people(dir: &Path, port: u16) {
    let mut ldif = format!("dn: {BASE}\nobjectClass: dcObject\nobjectClass: organization\ndc: example\no: Example\n\n");
    ldif += &format!("dn: ou=people,{BASE}\nobjectClass: organizationalUnit\nou: people\n\n");
    ldif += &format!("dn: ou=groups,{BASE}\nobjectClass: organizationalUnit\nou: groups\n\n");
    for user in ["alice", "bob", "dave"] {
        ldif += &format!("dn: uid={user},ou=people,{BASE}\nobjectClass: inetOrgPerson\nuid: {user}\ncn: {user}\nsn: {user}\nuserPassword: {user}-pw\n\n");
    }
    ldif += &format!(
        "dn: cn=odi-admins,ou=groups,{BASE}\nobjectClass: groupOfNames\ncn: odi-admins\nmember: uid=alice,ou=people,{BASE}\nmember: uid=dave,ou=people,{BASE}\n\n"
    );
    let path = dir.join("people.ldif");
    std::fs::write(&path, ldif).unwrap();
    let out =
        run("ldapadd", &["-x", "-H", &format!("ldap://127.0.0.1:{port}"), "-D", &format!("cn=root,{BASE}"), "-w", "rootpw", "-f", path.to_str().unwrap()]);
    assert!(out.status.success(), "ldapadd (ldap-utils): {}", String::from_utf8_lossy(&out.stderr));
}

fn directory(data: &Path, port: u16, ldap_port: u16) -> Proc {
    let listen = format!("127.0.0.1:{port}");
    let ldap = format!("ldap://127.0.0.1:{ldap_port}");
    let bind = format!("uid={{user}},ou=people,{BASE}");
    let group = format!("cn=odi-admins,ou=groups,{BASE}");
    let args = ["directory", "--listen", &listen, "--data", data.to_str().unwrap(), "--ldap-url", &ldap, "--ldap-bind-dn", &bind, "--ldap-admin-group", &group];
    let proc = Proc(spawn_odi(ADMIN, ENROLL, &args));
    wait_for(30, "the directory to answer", || curl(&[&format!("http://{listen}/healthz")]).status.success());
    proc
}

/// `curl -u USER ARGS...`: the status and the body.
fn as_user(user: &str, args: &[&str]) -> (u16, String) {
    let mut all = vec!["-u", user, "-o", "-", "-w", "\n%{http_code}"];
    all.extend_from_slice(args);
    let out = curl(&all);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_owned())
}

fn audit(dir: &str) -> Vec<serde_json::Value> {
    let page: serde_json::Value = serde_json::from_str(&odi_ok_as(ADMIN, &["audit", "--directory", dir, "--json"])).unwrap();
    page["entries"].as_array().cloned().unwrap_or_default()
}

#[test]
fn named_admins_log_in_by_ldap_and_the_audit_log_names_them() {
    let tmp = tempfile::tempdir().unwrap();
    let ldap_port = free_port();
    let mut ldap = slapd(&tmp.path().join("ldap"), ldap_port);
    load_people(tmp.path(), ldap_port);
    let port = free_port();
    let dir = format!("http://127.0.0.1:{port}");
    let data = tmp.path().join("dir");
    let mut directory_proc = directory(&data, port, ldap_port);

    // alice (in the group) creates a catalog and publishes with Basic auth.
    let (status, body) =
        as_user("alice:alice-pw", &["-X", "POST", "-H", "content-type: application/json", "-d", r#"{"name":"release"}"#, &format!("{dir}/api/v1/catalogs")]);
    assert_eq!(status, 201, "{body}");
    let file = tmp.path().join("x.iso");
    let bytes = noise(10_000, 7);
    std::fs::write(&file, &bytes).unwrap();
    let (status, body) = as_user("alice:alice-pw", &["-T", file.to_str().unwrap(), &format!("{dir}/api/v1/catalogs/release/artifacts/x.iso")]);
    assert_eq!(status, 201, "{body}");
    let (status, _) = as_user("alice:alice-pw", &[&format!("{dir}/api/v1/relays")]);
    assert_eq!(status, 200);

    // bob is no admin; a wrong password is refused; neither changes anything.
    let (status, body) =
        as_user("bob:bob-pw", &["-X", "POST", "-H", "content-type: application/json", "-d", r#"{"name":"bobs"}"#, &format!("{dir}/api/v1/catalogs")]);
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("not in the admin group"), "{body}");
    let (status, body) = as_user("alice:wrong", &[&format!("{dir}/api/v1/catalogs")]);
    assert_eq!(status, 401, "{body}");
    let catalogs = curl(&["-H", &format!("authorization: Bearer {ADMIN}"), &format!("{dir}/api/v1/catalogs")]);
    assert!(!String::from_utf8_lossy(&catalogs.stdout).contains("bobs"));

    // A user's publisher token: what it does is attributed to them.
    let (status, body) = as_user(
        "alice:alice-pw",
        &["-X", "POST", "-H", "content-type: application/json", "-d", r#"{"name":"ci","catalog":"release"}"#, &format!("{dir}/api/v1/tokens")],
    );
    assert_eq!(status, 201, "{body}");
    let token = serde_json::from_str::<serde_json::Value>(&body).unwrap()["token"].as_str().unwrap().to_owned();
    let file2 = tmp.path().join("y.iso");
    std::fs::write(&file2, noise(5_000, 8)).unwrap();
    let out = curl(&[
        "-f",
        "-H",
        &format!("authorization: Bearer {token}"),
        "-T",
        file2.to_str().unwrap(),
        &format!("{dir}/api/v1/catalogs/release/artifacts/y.iso"),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // The dashboard's user login, without JavaScript: a session cookie and a redirect.
    let out = curl(&["-i", "-d", "user=alice&password=alice-pw", &format!("{dir}/ui/login")]);
    let head = String::from_utf8_lossy(&out.stdout);
    assert!(head.starts_with("HTTP/1.1 303") && head.to_ascii_lowercase().contains("set-cookie: odi_session="), "{head}");
    let out = curl(&["-d", "user=bob&password=bob-pw", "-o", "/dev/null", "-w", "%{http_code}", &format!("{dir}/ui/login")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "403");

    // The LDAP server down: nobody new gets in, with a reason.
    drop(ldap);
    let (status, body) = as_user("dave:dave-pw", &[&format!("{dir}/api/v1/catalogs")]);
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("LDAP server") && body.contains("cannot be reached"), "{body}");

    let entries = audit(&dir);
    let publish = entries.iter().find(|e| e["action"] == "publish" && e["target"] == "release/x.iso").expect("alice's publish is in the audit log");
    assert_eq!(publish["who"], "user alice");
    assert_eq!(publish["client"], "127.0.0.1");
    assert_eq!(publish["status"], 201);
    assert!(publish["detail"].as_str().unwrap().contains(&format!("sha256:{}", sha256_hex(&bytes))), "{publish}");
    let by_token = entries.iter().find(|e| e["target"] == "release/y.iso").expect("the token's publish is logged");
    assert_eq!(by_token["who"], "token ci (alice)");
    let made = entries.iter().find(|e| e["action"] == "token add").expect("the token's creation is logged");
    assert_eq!((made["who"].as_str(), made["target"].as_str()), (Some("user alice"), Some("ci")));
    assert!(!serde_json::to_string(&entries).unwrap().contains(&token), "the audit log never keeps a token");
    assert!(entries.iter().all(|e| e["who"] != "user bob"), "a refused login changes nothing and is not an admin's entry");

    // The table, and the log after a restart.
    let table = odi_ok_as(ADMIN, &["audit", "--directory", &dir]);
    assert!(table.lines().any(|l| l.contains("user alice") && l.contains("publish") && l.contains("release/x.iso") && l.contains("127.0.0.1")), "{table}");
    drop(directory_proc);
    ldap = slapd(&tmp.path().join("ldap"), ldap_port);
    directory_proc = directory(&data, port, ldap_port);
    let after = audit(&dir);
    assert!(after.iter().any(|e| e["action"] == "publish" && e["who"] == "user alice" && e["target"] == "release/x.iso"), "{after:?}");
    let first: serde_json::Value = serde_json::from_str(&odi_ok_as(ADMIN, &["audit", "--directory", &dir, "--json", "--limit", "1"])).unwrap();
    let before = first["next_before"].as_u64().expect("more than one page");
    let second: serde_json::Value =
        serde_json::from_str(&odi_ok_as(ADMIN, &["audit", "--directory", &dir, "--json", "--limit", "1", "--before", &before.to_string()])).unwrap();
    assert!(second["entries"][0]["id"].as_u64().unwrap() < first["entries"][0]["id"].as_u64().unwrap());
    // The Audit page, logged in as the user, readable without JavaScript.
    let jar = tmp.path().join("jar");
    let out = curl(&["-c", jar.to_str().unwrap(), "-d", "user=alice&password=alice-pw", "-o", "/dev/null", &format!("{dir}/ui/login")]);
    assert!(out.status.success());
    let page = String::from_utf8_lossy(&curl(&["-b", jar.to_str().unwrap(), &format!("{dir}/ui/audit")]).stdout).into_owned();
    assert!(page.contains("Audit log") && page.contains("user alice") && page.contains("release/x.iso"), "{page}");
    drop(directory_proc);
    drop(ldap);
}
