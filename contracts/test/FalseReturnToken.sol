// SPDX-License-Identifier: MIT
pragma solidity ^0.8.24;

import {ERC20} from "@openzeppelin/contracts/token/ERC20/ERC20.sol";

/**
 * @title FalseReturnToken (test only)
 * @notice An ERC-20 whose `transfer` moves nothing and returns false instead of reverting, as some early tokens did
 * on failure; or, once `revertTransfers()` was called, reverts with a reason (which the payout must pass on as it
 * is). `transferFrom` works, so channels can be funded; every payout must then be refused.
 */
contract FalseReturnToken is ERC20 {
    bool public reverts;

    constructor() ERC20("False Return Token", "FALSE") {}

    function revertTransfers() external {
        reverts = true;
    }

    function mint(address to, uint256 amount) external {
        _mint(to, amount);
    }

    function transfer(address, uint256) public view override returns (bool) {
        require(!reverts, "FalseReturnToken: transfer refused");
        return false;
    }
}
