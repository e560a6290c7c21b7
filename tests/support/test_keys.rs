//! RSA key pairs and self-signed certificates for apps that use certificate credentials.
//!
//! Entra only takes RSA certificates for client assertions (RS256/PS256), and ring, our only
//! crypto provider, can sign with RSA but cannot generate RSA keys (rcgen with ring says
//! `KeyGenerationUnavailable`). Rather than commit a private key to the repository or pull in a
//! second crypto stack, this file carries a small RSA-2048 generator: random primes by sieve +
//! Miller-Rabin over Montgomery arithmetic, CRT parameters, PKCS#8 DER. It is for tests only
//! (not constant-time); ring validates every key it produces when loading it.
//! One key is generated per test process and cached; certificates around it are cheap.

use std::sync::OnceLock;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use rand::RngCore;
use rcgen::{CertificateParams, DnType, KeyPair, PKCS_RSA_SHA256};

/// A certificate credential: public certificate (register it on the `App`) and its key.
#[derive(Clone, Debug)]
pub struct TestCertificate {
    pub cert_pem: String,
    /// PKCS#8 PEM (`-----BEGIN PRIVATE KEY-----`).
    pub key_pem: String,
}

/// A self-signed RSA certificate named `common_name`, using the process-wide test key.
/// Two calls with different names give different certificates (and thumbprints) for the
/// same key.
pub fn app_certificate(common_name: &str) -> TestCertificate {
    certificate_for_key(common_name, rsa_private_key_pem())
}

/// A self-signed RSA certificate for the given PKCS#8 PEM key.
pub fn certificate_for_key(common_name: &str, key_pem: &str) -> TestCertificate {
    let key = KeyPair::from_pkcs8_pem_and_sign_algo(key_pem, &PKCS_RSA_SHA256)
        .expect("rcgen accepts the RSA key");
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("certificate params");
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    let cert = params.self_signed(&key).expect("self-signed certificate");
    TestCertificate {
        cert_pem: cert.pem(),
        key_pem: key_pem.to_string(),
    }
}

/// The process-wide RSA-2048 test key (PKCS#8 PEM), generated on first use.
pub fn rsa_private_key_pem() -> &'static str {
    static KEY: OnceLock<String> = OnceLock::new();
    KEY.get_or_init(generate_rsa_private_key_pem)
}

/// A fresh RSA-2048 key (PKCS#8 PEM). Takes a moment in a debug build; prefer the cached one.
pub fn generate_rsa_private_key_pem() -> String {
    const E: u64 = 65537;
    let primes = small_primes(20_000);
    loop {
        let a = random_prime(1024, &primes, E);
        let b = random_prime(1024, &primes, E);
        let (p, q) = match cmp(&a, &b) {
            std::cmp::Ordering::Greater => (a, b),
            std::cmp::Ordering::Less => (b, a),
            std::cmp::Ordering::Equal => continue,
        };
        let n = mul(&p, &q);
        let p1 = sub_small(&p, 1);
        let q1 = sub_small(&q, 1);
        let d = inverse_of_small(E, &mul(&p1, &q1));
        let dp = inverse_of_small(E, &p1);
        let dq = inverse_of_small(E, &q1);
        // q^-1 mod p by Fermat: q^(p-2) mod p.
        let mont = Mont::new(&p);
        let qinv = mont.out_of_mont(&mont.pow(&mont.to_mont(&q), &sub_small(&p, 2)));

        let rsa_private_key = der_seq(&[
            der_uint(&[0]),
            der_uint(&n),
            der_uint(&[E]),
            der_uint(&d),
            der_uint(&p),
            der_uint(&q),
            der_uint(&dp),
            der_uint(&dq),
            der_uint(&qinv),
        ]);
        let rsa_algorithm = [
            0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01, 0x05,
            0x00,
        ];
        let pkcs8 = der_seq(&[
            der_uint(&[0]),
            rsa_algorithm.to_vec(),
            der(0x04, &rsa_private_key),
        ]);
        ring::signature::RsaKeyPair::from_pkcs8(&pkcs8)
            .expect("ring accepts the generated RSA key");
        return pem("PRIVATE KEY", &pkcs8);
    }
}

fn pem(label: &str, der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(std::str::from_utf8(chunk).expect("base64 is ASCII"));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

// ----- DER -------------------------------------------------------------------------------------

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len
            .to_be_bytes()
            .into_iter()
            .skip_while(|b| *b == 0)
            .collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

fn der_seq(items: &[Vec<u8>]) -> Vec<u8> {
    der(0x30, &items.concat())
}

/// A non-negative INTEGER from little-endian u64 limbs.
fn der_uint(limbs: &[u64]) -> Vec<u8> {
    let mut be: Vec<u8> = limbs.iter().rev().flat_map(|l| l.to_be_bytes()).collect();
    let first = be.iter().position(|b| *b != 0).unwrap_or(be.len() - 1);
    be.drain(..first);
    if be[0] & 0x80 != 0 {
        be.insert(0, 0);
    }
    der(0x02, &be)
}

// ----- arithmetic on little-endian u64 limbs ---------------------------------------------------

type Limbs = Vec<u64>;

fn small_primes(limit: usize) -> Vec<u64> {
    let mut composite = vec![false; limit];
    let mut primes = Vec::new();
    for i in 2..limit {
        if !composite[i] {
            if i > 2 {
                primes.push(i as u64);
            }
            let mut j = i * i;
            while j < limit {
                composite[j] = true;
                j += i;
            }
        }
    }
    primes
}

/// A random prime of exactly `bits` bits (top two bits set, so a product of two has 2*bits),
/// with `p mod e != 1` so that e is invertible mod p-1.
fn random_prime(bits: usize, primes: &[u64], e: u64) -> Limbs {
    let k = bits / 64;
    let mut rng = rand::thread_rng();
    loop {
        let mut base = vec![0u64; k];
        for limb in base.iter_mut() {
            *limb = rng.next_u64();
        }
        base[k - 1] |= 0b11 << 62;
        base[0] |= 1;
        let residues: Vec<u64> = primes.iter().map(|p| rem_small(&base, *p)).collect();
        // Walk odd offsets from the random start; the sieve skips most composites cheaply.
        for delta in (0..1u64 << 16).step_by(2) {
            if residues
                .iter()
                .zip(primes)
                .any(|(r, p)| (r + delta) % p == 0)
            {
                continue;
            }
            let candidate = add_small(&base, delta);
            if candidate.len() != k || candidate[k - 1] >> 62 != 0b11 {
                break;
            }
            if rem_small(&candidate, e) == 1 {
                continue;
            }
            if is_probable_prime(&candidate) {
                return candidate;
            }
        }
    }
}

fn is_probable_prime(n: &[u64]) -> bool {
    let mont = Mont::new(n);
    let n1 = sub_small(n, 1);
    let s = trailing_zeros(&n1);
    let d = shr(&n1, s);
    let one = mont.one.clone();
    let minus_one = mont.to_mont(&n1);
    'bases: for base in [2u64, 3, 5, 7, 11, 13, 17, 19, 23, 29] {
        let mut a = vec![0u64; n.len()];
        a[0] = base;
        let mut x = mont.pow(&mont.to_mont(&a), &d);
        if x == one || x == minus_one {
            continue;
        }
        for _ in 1..s {
            x = mont.mul(&x, &x);
            if x == minus_one {
                continue 'bases;
            }
            if x == one {
                return false;
            }
        }
        return false;
    }
    true
}

/// d with d*e = 1 mod m, for a small e coprime to m: d = (1 + k*m) / e where k*m = -1 mod e.
fn inverse_of_small(e: u64, m: &[u64]) -> Limbs {
    let m_mod_e = rem_small(m, e);
    let inv = small_inverse(m_mod_e, e);
    let k = (e - inv) % e;
    let mut x = add_small(&mul_small(m, k), 1);
    let rem = div_small(&mut x, e);
    assert_eq!(rem, 0, "exact division in modular inverse");
    trim(&mut x);
    x
}

fn small_inverse(a: u64, m: u64) -> u64 {
    let (mut old_r, mut r) = (a as i128, m as i128);
    let (mut old_s, mut s) = (1i128, 0i128);
    while r != 0 {
        let q = old_r / r;
        (old_r, r) = (r, old_r - q * r);
        (old_s, s) = (s, old_s - q * s);
    }
    assert_eq!(old_r, 1, "not invertible");
    old_s.rem_euclid(m as i128) as u64
}

fn trim(x: &mut Limbs) {
    while x.len() > 1 && *x.last().expect("non-empty") == 0 {
        x.pop();
    }
}

fn cmp(a: &[u64], b: &[u64]) -> std::cmp::Ordering {
    let len = a.len().max(b.len());
    for i in (0..len).rev() {
        let (x, y) = (
            a.get(i).copied().unwrap_or(0),
            b.get(i).copied().unwrap_or(0),
        );
        if x != y {
            return x.cmp(&y);
        }
    }
    std::cmp::Ordering::Equal
}

fn rem_small(a: &[u64], m: u64) -> u64 {
    a.iter()
        .rev()
        .fold(0u128, |r, limb| ((r << 64) | *limb as u128) % m as u128) as u64
}

fn div_small(a: &mut [u64], m: u64) -> u64 {
    let mut r = 0u128;
    for limb in a.iter_mut().rev() {
        let cur = (r << 64) | *limb as u128;
        *limb = (cur / m as u128) as u64;
        r = cur % m as u128;
    }
    r as u64
}

fn add_small(a: &[u64], b: u64) -> Limbs {
    let mut out = a.to_vec();
    let mut carry = b;
    for limb in out.iter_mut() {
        let (v, c) = limb.overflowing_add(carry);
        *limb = v;
        carry = c as u64;
        if carry == 0 {
            break;
        }
    }
    if carry != 0 {
        out.push(carry);
    }
    out
}

fn sub_small(a: &[u64], b: u64) -> Limbs {
    let mut out = a.to_vec();
    let mut borrow = b;
    for limb in out.iter_mut() {
        let (v, c) = limb.overflowing_sub(borrow);
        *limb = v;
        borrow = c as u64;
        if borrow == 0 {
            break;
        }
    }
    assert_eq!(borrow, 0, "subtraction underflow");
    out
}

fn mul_small(a: &[u64], b: u64) -> Limbs {
    let mut out = Vec::with_capacity(a.len() + 1);
    let mut carry = 0u128;
    for limb in a {
        let v = *limb as u128 * b as u128 + carry;
        out.push(v as u64);
        carry = v >> 64;
    }
    out.push(carry as u64);
    out
}

fn mul(a: &[u64], b: &[u64]) -> Limbs {
    let mut out = vec![0u64; a.len() + b.len()];
    for (i, x) in a.iter().enumerate() {
        let mut carry = 0u128;
        for (j, y) in b.iter().enumerate() {
            let v = out[i + j] as u128 + *x as u128 * *y as u128 + carry;
            out[i + j] = v as u64;
            carry = v >> 64;
        }
        out[i + b.len()] = carry as u64;
    }
    trim(&mut out);
    out
}

fn trailing_zeros(a: &[u64]) -> usize {
    let mut bits = 0;
    for limb in a {
        if *limb == 0 {
            bits += 64;
        } else {
            return bits + limb.trailing_zeros() as usize;
        }
    }
    bits
}

fn shr(a: &[u64], bits: usize) -> Limbs {
    let (words, bits) = (bits / 64, bits % 64);
    let mut out: Limbs = a[words..].to_vec();
    if bits > 0 {
        for i in 0..out.len() {
            let hi = out.get(i + 1).copied().unwrap_or(0);
            out[i] = (out[i] >> bits) | (hi << (64 - bits));
        }
    }
    out.resize(a.len(), 0);
    out
}

/// Montgomery arithmetic modulo an odd `m` (CIOS multiplication), R = 2^(64*len).
struct Mont {
    m: Limbs,
    /// -m^-1 mod 2^64
    m_inv: u64,
    /// R^2 mod m
    r2: Limbs,
    /// R mod m (1 in Montgomery form)
    one: Limbs,
}

impl Mont {
    fn new(m: &[u64]) -> Mont {
        let mut inv: u64 = 1;
        for _ in 0..6 {
            inv = inv.wrapping_mul(2u64.wrapping_sub(m[0].wrapping_mul(inv)));
        }
        let k = m.len();
        // R mod m, then R^2 mod m, by modular doubling from 1.
        let mut x = vec![0u64; k];
        x[0] = 1;
        let mut one = Vec::new();
        for i in 0..128 * k {
            x = Self::double_mod(&x, m);
            if i + 1 == 64 * k {
                one = x.clone();
            }
        }
        Mont {
            m: m.to_vec(),
            m_inv: inv.wrapping_neg(),
            r2: x,
            one,
        }
    }

    fn double_mod(x: &[u64], m: &[u64]) -> Limbs {
        let mut out = Vec::with_capacity(x.len());
        let mut carry = 0u64;
        for limb in x {
            out.push((limb << 1) | carry);
            carry = limb >> 63;
        }
        if carry != 0 || cmp(&out, m) != std::cmp::Ordering::Less {
            sub_in_place(&mut out, m);
        }
        out
    }

    fn mul(&self, a: &[u64], b: &[u64]) -> Limbs {
        let k = self.m.len();
        let m = &self.m;
        let mut t = vec![0u64; k + 2];
        for &bi in b.iter().take(k) {
            let mut c = 0u128;
            for j in 0..k {
                let s = t[j] as u128 + a[j] as u128 * bi as u128 + c;
                t[j] = s as u64;
                c = s >> 64;
            }
            let s = t[k] as u128 + c;
            t[k] = s as u64;
            t[k + 1] = (s >> 64) as u64;
            let mm = t[0].wrapping_mul(self.m_inv);
            let s = t[0] as u128 + mm as u128 * m[0] as u128;
            let mut c = s >> 64;
            for j in 1..k {
                let s = t[j] as u128 + mm as u128 * m[j] as u128 + c;
                t[j - 1] = s as u64;
                c = s >> 64;
            }
            let s = t[k] as u128 + c;
            t[k - 1] = s as u64;
            t[k] = t[k + 1] + (s >> 64) as u64;
        }
        let mut out = t[..=k].to_vec();
        if cmp(&out, m) != std::cmp::Ordering::Less {
            sub_in_place(&mut out, m);
        }
        out.truncate(k);
        out
    }

    fn to_mont(&self, a: &[u64]) -> Limbs {
        let mut a = a.to_vec();
        a.resize(self.m.len(), 0);
        self.mul(&a, &self.r2)
    }

    fn out_of_mont(&self, a: &[u64]) -> Limbs {
        let mut one = vec![0u64; self.m.len()];
        one[0] = 1;
        self.mul(a, &one)
    }

    /// base^exp, base and result in Montgomery form.
    fn pow(&self, base: &[u64], exp: &[u64]) -> Limbs {
        let mut acc = self.one.clone();
        for limb in exp.iter().rev() {
            for bit in (0..64).rev() {
                acc = self.mul(&acc, &acc);
                if (limb >> bit) & 1 == 1 {
                    acc = self.mul(&acc, base);
                }
            }
        }
        acc
    }
}

/// a -= b (a >= b as numbers; a may have one limb more than b).
fn sub_in_place(a: &mut [u64], b: &[u64]) {
    let mut borrow = 0u64;
    for (i, limb) in a.iter_mut().enumerate() {
        let y = b.get(i).copied().unwrap_or(0);
        let (v1, c1) = limb.overflowing_sub(y);
        let (v2, c2) = v1.overflowing_sub(borrow);
        *limb = v2;
        borrow = (c1 || c2) as u64;
    }
}
