// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/**
 * @title HostileToken (test only)
 * @notice An ERC-20 whose every balance move first calls back into a chosen contract (an armed "attack"), to prove
 * that the escrow refuses re-entry. The callback's outcome is recorded, not bubbled, so the test can inspect it.
 */
contract HostileToken is ERC20 {
    address private _target;
    bytes private _payload;
    bool private _attacking;

    /// @notice Whether the last callback succeeded, and what it returned or reverted with.
    bool public lastAttackSucceeded;
    bytes public lastAttackResult;
    uint256 public attacks;

    constructor() ERC20("Hostile Token", "HOST") {}

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    /// @notice Arms the callback: on the next balance move, `target` is called with `payload` (once).
    function arm(address target, bytes calldata payload) external {
        _target = target;
        _payload = payload;
    }

    function _update(address from, address to, uint256 value) internal override {
        address target = _target;
        if (target != address(0) && !_attacking && from != address(0)) {
            _attacking = true;
            _target = address(0);
            (bool ok, bytes memory result) = target.call(_payload);
            lastAttackSucceeded = ok;
            lastAttackResult = result;
            ++attacks;
            _attacking = false;
        }
        super._update(from, to, value);
    }
}
