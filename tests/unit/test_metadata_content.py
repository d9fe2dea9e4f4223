"""Metadata documents: the OpenStack and EC2 trees, listings, the paths
cloud-init 22.4 requests, and IMDSv2 tokens."""

from __future__ import annotations

import base64
import json

import pytest

from stackbox.guest import configdrive
from stackbox.metadata import content, tokens
from stackbox.metadata.content import InstanceMetadata, Interface

UUID = "6f1c3b1e-2a4b-4c6d-8e9f-0a1b2c3d4e5f"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGk test@example"


def _instance(**kw) -> InstanceMetadata:
    base = dict(
        uuid=UUID, name="web-1", hostname="web-1", project_id="p" * 32,
        availability_zone="az1", launch_index=2, instance_type="m1.tiny",
        public_keys=(("mykey", KEY),), user_data=b"#cloud-config\n{}\n",
        meta=(("role", "web"),), security_groups=("default", "web"),
        interfaces=(Interface(port_id="0d5c7a9e-1111-2222-3333-444455556666",
                              mac="fa:16:3e:00:00:01", network_id="n" * 36,
                              ip="10.0.0.5", cidr="10.0.0.0/24", gateway="10.0.0.1",
                              dns_nameservers=("10.0.0.2",), floating_ip="172.24.4.10"),))
    base.update(kw)
    return InstanceMetadata(**base)


@pytest.fixture
def docs():
    return content.build(_instance(), random_seed=b"\x01" * 512)


def test_openstack_version_list_and_listing(docs):
    versions = docs.get("/openstack").decode().split("\n")
    assert versions[0] == "2012-08-10" and versions[-1] == "latest"
    assert "2018-08-27" in versions and len(versions) == 9
    assert docs.get("/openstack/") == docs.get("/openstack")
    assert docs.get("/openstack/2018-08-27/").decode().split("\n") == [
        "meta_data.json", "network_data.json", "user_data", "vendor_data.json",
        "vendor_data2.json"]
    # files appear only from the version that introduced them
    assert docs.get("/openstack/2012-08-10").decode().split("\n") == [
        "meta_data.json", "user_data"]
    assert docs.get("/openstack/2012-08-10/network_data.json") is None


def test_meta_data_json_has_nova_fields(docs):
    md = json.loads(docs.get("/openstack/2018-08-27/meta_data.json"))
    assert md["uuid"] == UUID and md["name"] == "web-1" and md["hostname"] == "web-1"
    assert md["availability_zone"] == "az1" and md["launch_index"] == 2
    assert md["project_id"] == "p" * 32 and md["meta"] == {"role": "web"}
    assert md["public_keys"] == {"mykey": KEY}
    assert md["keys"] == [{"name": "mykey", "type": "ssh", "data": KEY}]
    assert base64.b64decode(md["random_seed"]) == b"\x01" * 512
    assert md["devices"] == []
    assert docs.get("/openstack/latest/meta_data.json") == docs.get(
        "/openstack/2018-08-27/meta_data.json")


def test_same_documents_as_the_config_drive():
    """One builder, two transports: every config-drive file is served at
    the same path by the metadata service, byte for byte."""
    inst = _instance()
    docs = content.build(inst, random_seed=b"\x02" * 512)
    md = content.meta_data(inst, random_seed=b"\x02" * 512)
    drive = configdrive.openstack_layout(md, inst.user_data, content.network_data(inst), None,
                                         ec2_extra=content.ec2_extra(inst))
    for rel, body in drive.items():
        if rel.startswith("openstack/"):
            assert docs.get(rel) == body, rel
    ec2 = json.loads(drive["ec2/latest/meta-data.json"])
    assert ec2["local-ipv4"] == docs.get("/latest/meta-data/local-ipv4").decode()
    assert ec2["instance-id"] == docs.get("/latest/meta-data/instance-id").decode()


def test_user_data_and_vendor_data(docs):
    assert docs.get("/openstack/2018-08-27/user_data") == b"#cloud-config\n{}\n"
    assert docs.get("/latest/user-data") == b"#cloud-config\n{}\n"
    assert json.loads(docs.get("/openstack/2018-08-27/vendor_data.json")) == {}
    assert json.loads(docs.get("/openstack/2018-08-27/vendor_data2.json")) == {}
    no_ud = content.build(_instance(user_data=None))
    assert no_ud.get("/openstack/latest/user_data") is None
    assert no_ud.get("/latest/user-data") is None
    assert no_ud.get("/latest").decode() == "meta-data"
    assert "user_data" not in no_ud.get("/openstack/latest").decode()


def test_network_data_links_carry_the_real_mac(docs):
    net = json.loads(docs.get("/openstack/2018-08-27/network_data.json"))
    assert [link["ethernet_mac_address"] for link in net["links"]] == ["fa:16:3e:00:00:01"]
    assert net["networks"][0]["link"] == net["links"][0]["id"]
    assert net["networks"][0]["ip_address"] == "10.0.0.5"
    assert net["networks"][0]["netmask"] == "255.255.255.0"
    assert net["services"] == [{"type": "dns", "address": "10.0.0.2"}]
    # {} means: serve none (cloud-init tolerates the 404)
    assert content.build(_instance(network_data={})).get(
        "/openstack/latest/network_data.json") is None


def test_ec2_listings_end_directories_in_slash(docs):
    top = docs.get("/latest/meta-data/").decode().split("\n")
    for entry in ("ami-id", "ami-launch-index", "ami-manifest-path", "block-device-mapping/",
                  "hostname", "instance-id", "instance-type", "local-hostname", "local-ipv4",
                  "mac", "network/", "placement/", "public-hostname", "public-ipv4",
                  "public-keys/", "reservation-id", "security-groups"):
        assert entry in top, entry
    assert top == sorted(top)
    assert docs.get("/latest/meta-data") == docs.get("/latest/meta-data/")
    assert docs.get("/latest/meta-data/placement/") == b"availability-zone"
    assert docs.get("/latest/meta-data/placement/availability-zone") == b"az1"
    assert docs.get("/latest/meta-data/block-device-mapping/") == b"ami\nroot"
    assert docs.get("/latest/meta-data/block-device-mapping/root") == b"/dev/vda"
    assert docs.get("/latest/meta-data/public-keys/") == b"0=mykey"
    assert docs.get("/latest/meta-data/public-keys/0/") == b"openssh-key"
    assert docs.get("/latest/meta-data/public-keys/0/openssh-key") == KEY.encode()
    assert docs.get("/latest/meta-data/security-groups") == b"default\nweb"
    assert docs.get("/latest/meta-data/ami-launch-index") == b"2"
    assert docs.get("/") == b"2009-04-04\nlatest"


def test_ec2_values(docs):
    get = lambda p: docs.get(f"/latest/meta-data/{p}").decode()  # noqa: E731
    assert get("instance-id") == "i-6f1c3b1e"
    assert get("local-hostname") == "web-1" and get("hostname") == "web-1"
    assert get("local-ipv4") == "10.0.0.5" and get("public-ipv4") == "172.24.4.10"
    assert get("mac") == "fa:16:3e:00:00:01"
    assert get("network/interfaces/macs/") == "fa:16:3e:00:00:01/"
    base = "network/interfaces/macs/fa:16:3e:00:00:01"
    assert get(f"{base}/local-ipv4s") == "10.0.0.5"
    assert get(f"{base}/public-ipv4s") == "172.24.4.10"
    assert get(f"{base}/device-number") == "0"
    assert get(f"{base}/subnet-ipv4-cidr-block") == "10.0.0.0/24"


def test_ec2_2009_04_04_has_no_later_fields(docs):
    old = docs.get("/2009-04-04/meta-data/").decode().split("\n")
    assert "instance-id" in old and "public-keys/" in old
    assert "mac" not in old and "network/" not in old
    assert docs.get("/2009-04-04/meta-data/mac") is None
    assert docs.get("/2009-04-04/user-data") == b"#cloud-config\n{}\n"


def test_no_floating_ip_no_public_ipv4():
    inst = _instance(interfaces=(Interface(port_id="x" * 36, mac="fa:16:3e:00:00:02",
                                           network_id="n", ip="10.0.0.6", cidr="10.0.0.0/24"),))
    docs = content.build(inst)
    assert docs.get("/latest/meta-data/public-ipv4") is None
    assert "public-ipv4" not in docs.get("/latest/meta-data/").decode().split("\n")


def test_every_cloud_init_path_is_served(docs):
    seq = content.cloud_init_paths(docs)
    assert seq[:2] == ["/openstack", "/openstack"]
    assert seq[2] == "/openstack/2018-08-27/meta_data.json"
    assert "/latest/meta-data/public-keys/0/openssh-key" in seq
    assert "/latest/meta-data/placement/availability-zone" in seq
    assert "/latest/meta-data/block-device-mapping/ami" in seq
    assert "/latest/meta-data/reservation-id" in seq
    assert len(seq) >= 27
    missing = [p for p in seq if docs.get(p) is None]
    assert missing == []


@pytest.mark.parametrize("raw,norm", [
    ("/", ""), ("/openstack", "openstack"), ("/latest//meta-data/", "latest/meta-data"),
    ("/latest/meta-data/?x=1", "latest/meta-data"), ("latest/meta-data#f", "latest/meta-data")])
def test_normalize(raw, norm):
    assert content.normalize(raw) == norm


def test_instances_get_different_random_seeds():
    a = json.loads(content.build(_instance()).get("/openstack/latest/meta_data.json"))
    b = json.loads(content.build(_instance()).get("/openstack/latest/meta_data.json"))
    assert a["random_seed"] != b["random_seed"]


# --- IMDSv2 tokens ----------------------------------------------------------------

def test_token_is_bound_to_instance_and_expires():
    key = tokens.new_key()
    tok = tokens.issue(key, "net-a", "10.0.0.5", 60, now=1000)
    assert tokens.valid(key, tok, "net-a", "10.0.0.5", now=1059)
    assert not tokens.valid(key, tok, "net-a", "10.0.0.5", now=1061)
    assert not tokens.valid(key, tok, "net-a", "10.0.0.6", now=1000)
    assert not tokens.valid(key, tok, "net-b", "10.0.0.5", now=1000)
    assert not tokens.valid(tokens.new_key(), tok, "net-a", "10.0.0.5", now=1000)
    forged = "999999." + tok.split(".", 1)[1]
    assert not tokens.valid(key, forged, "net-a", "10.0.0.5", now=1000)
    assert not tokens.valid(key, "garbage", "net-a", "10.0.0.5", now=1000)


@pytest.mark.parametrize("value", [None, "", "0", "21601", "abc", "-5"])
def test_token_ttl_bad_values_name_the_header(value):
    with pytest.raises(tokens.TokenError, match="x-aws-ec2-metadata-token-ttl-seconds"):
        tokens.parse_ttl(value)


def test_token_ttl_good_values():
    assert tokens.parse_ttl("1") == 1 and tokens.parse_ttl(" 21600 ") == 21600
