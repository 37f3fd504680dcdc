-- A tshark dissector for GUE (draft-ietf-intarea-gue: the variant 0 header, and variant 1), test equipment for
-- test_kernel_fou.py.
--
-- Wireshark 4.0 has none. This one is written from the draft's header diagram only (not from usertunnel's
-- code), and hands what follows the header to tshark's own dissectors by IP protocol number, so that the GRE,
-- IPv4 or IPv6 packet inside is decoded and its checksums judged by tshark itself:
--
--    0                   1                   2                   3
--    0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
--   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
--   |0x0|C|   Hlen  |  Proto/ctype  |             Flags             |
--   +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
--
-- Version (2 bits), C (control message), Hlen (extension fields in 32-bit words, the first word not counted),
-- Proto/ctype (the IP protocol number of the payload when C is 0), Flags. Variant 1 (version bits 01) has no
-- GUE header: the payload is an IPv4 or IPv6 packet itself.
-- Use: tshark -X lua_script:gue.lua -d udp.port==6080,gue

local gue = Proto("gue", "Generic UDP Encapsulation")
local f_version = ProtoField.uint8("gue.version", "Version", base.DEC, nil, 0xC0)
local f_control = ProtoField.uint8("gue.c", "C (control)", base.DEC, nil, 0x20)
local f_hlen = ProtoField.uint8("gue.hlen", "Hlen", base.DEC, nil, 0x1F)
local f_proto = ProtoField.uint8("gue.proto_ctype", "Proto/ctype", base.DEC)
local f_flags = ProtoField.uint16("gue.flags", "Flags", base.HEX)
local f_options = ProtoField.bytes("gue.options", "Extension fields")
gue.fields = { f_version, f_control, f_hlen, f_proto, f_flags, f_options }

local ip_proto = DissectorTable.get("ip.proto")

function gue.dissector(tvb, pinfo, tree)
  if tvb:len() < 1 then
    return 0
  end
  local first = tvb(0, 1):uint()
  local version = bit32.rshift(first, 6)
  pinfo.cols.protocol = "GUE"
  if version == 1 then
    local ipv = bit32.rshift(first, 4)
    local t = tree:add(gue, tvb(0, 1), "Generic UDP Encapsulation, variant 1 (no header)")
    t:add(f_version, tvb(0, 1))
    ip_proto:try(ipv == 6 and 41 or 4, tvb, pinfo, tree)
    return tvb:len()
  end
  if tvb:len() < 4 then
    return 0
  end
  local length = 4 + 4 * bit32.band(first, 0x1F)
  local t = tree:add(gue, tvb(0, math.min(length, tvb:len())))
  t:add(f_version, tvb(0, 1))
  t:add(f_control, tvb(0, 1))
  t:add(f_hlen, tvb(0, 1))
  t:add(f_proto, tvb(1, 1))
  t:add(f_flags, tvb(2, 2))
  if length > 4 and tvb:len() >= length then
    t:add(f_options, tvb(4, length - 4))
  end
  if bit32.band(first, 0x20) == 0 and version == 0 and tvb:len() > length then
    ip_proto:try(tvb(1, 1):uint(), tvb(length):tvb(), pinfo, tree)
  end
  return tvb:len()
end

DissectorTable.get("udp.port"):add_for_decode_as(gue)
