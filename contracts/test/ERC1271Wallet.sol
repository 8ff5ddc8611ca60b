// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {IERC1271} from "@openzeppelin/contracts/interfaces/IERC1271.sol";
import {ECDSA} from "@openzeppelin/contracts/utils/cryptography/ECDSA.sol";

/// @title ERC1271Wallet (test only)
/// @notice A smart-contract account: it accepts signatures made by its owner key (ERC-1271) and makes calls
/// (approve, open a channel, top up, reclaim) when its owner asks, as a smart account would. `setBehaviour`
/// turns it hostile for tests: rejecting every signature, reverting, or burning all the gas it is given.
contract ERC1271Wallet is IERC1271 {
    enum Behaviour {
        OwnerSigns,
        RejectsAll,
        Reverts,
        BurnsGas
    }

    address public immutable owner;
    Behaviour public behaviour;

    error ERC1271WalletNotOwner(address caller);

    constructor(address owner_) {
        owner = owner_;
    }

    modifier onlyOwner() {
        if (msg.sender != owner) revert ERC1271WalletNotOwner(msg.sender);
        _;
    }

    /// @notice Calls `target` with `value` wei and `data` as this wallet; a revert is passed on as it came.
    /// The signature is the one common smart accounts share (ERC-4337 SimpleAccount, LightAccount, Coinbase
    /// Smart Wallet): what `marketplace consumer open-channel --payer-wallet` sends.
    function execute(
        address target,
        uint256 value,
        bytes calldata data
    ) external payable onlyOwner returns (bytes memory result) {
        bool ok;
        (ok, result) = target.call{value: value}(data);
        if (!ok) {
            assembly ("memory-safe") {
                revert(add(result, 32), mload(result))
            }
        }
    }

    function setBehaviour(Behaviour behaviour_) external onlyOwner {
        behaviour = behaviour_;
    }

    function isValidSignature(bytes32 hash, bytes calldata signature) external view returns (bytes4) {
        Behaviour current = behaviour;
        if (current == Behaviour.Reverts) revert("ERC1271Wallet: reverts");
        if (current == Behaviour.BurnsGas) {
            while (gasleft() > 0) {} // solhint-disable-line no-empty-blocks
        }
        (address recovered, ECDSA.RecoverError error, ) = ECDSA.tryRecover(hash, signature);
        bool valid = current == Behaviour.OwnerSigns && error == ECDSA.RecoverError.NoError && recovered == owner;
        return valid ? this.isValidSignature.selector : bytes4(0);
    }
}
