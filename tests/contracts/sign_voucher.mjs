// Signs a PaymentChannels voucher with ethers.js, an EIP-712 implementation independent of eth-account.
//
//   node tests/contracts/sign_voucher.mjs '{"privateKey": "0x..", "chainId": 31337, "escrow": "0x..",
//                                           "channelId": "123", "amount": "456"}'
//
// Prints one JSON line: {"signer", "digest", "signature"} (signature: 65 bytes r || s || v, hex).
import { TypedDataEncoder, Wallet } from "ethers";

const input = JSON.parse(process.argv[2]);
const domain = {
  name: "ModelMarketplace",
  version: "1",
  chainId: input.chainId,
  verifyingContract: input.escrow,
};
const types = {
  Voucher: [
    { name: "channelId", type: "uint256" },
    { name: "amount", type: "uint256" },
  ],
};
const value = { channelId: BigInt(input.channelId), amount: BigInt(input.amount) };
const wallet = new Wallet(input.privateKey);
const signature = await wallet.signTypedData(domain, types, value);
console.log(JSON.stringify({ signer: wallet.address, digest: TypedDataEncoder.hash(domain, types, value), signature }));
